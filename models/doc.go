// Package models ships the trained model files that flashmemd embeds, so
// the daemon has a useful default with no file on disk: TextModeDefault is
// models/textmode-default.safetensors (the text-mode dual encoder of package
// indexer/textmode, 8.7 MB; README.md says what it was trained on and how to
// retrain it with `flashmemctl train`).
//
//	m, err := textmode.Load(models.TextModeDefault)
package models
