package ctl

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress shows a bar on a terminal and a line every ~10 % otherwise, so
// logs of scripted runs stay readable.
type progress struct {
	mu    sync.Mutex // add may be called from several goroutines (sim)
	bar   *progressbar.ProgressBar
	w     io.Writer
	what  string
	max   int64
	cur   int64
	shown int64
	t0    time.Time
}

func newProgress(w io.Writer, max int64, what string) *progress {
	p := &progress{w: w, what: what, max: max, t0: time.Now()}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		if max <= 0 {
			max = -1 // unknown: a spinner
		}
		p.bar = progressbar.NewOptions64(max, progressbar.OptionSetWriter(w), progressbar.OptionSetDescription(what),
			progressbar.OptionShowCount(), progressbar.OptionSetWidth(30), progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish())
	}
	return p
}

func (p *progress) add(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cur += n
	if p.bar != nil {
		_ = p.bar.Add64(n)
		return
	}
	if p.max > 0 && (p.cur-p.shown)*10 >= p.max || p.cur == p.max {
		p.shown = p.cur
		fmt.Fprintf(p.w, "  %s: %d/%d (%.0f%%) %.1fs\n", p.what, p.cur, p.max, 100*float64(p.cur)/float64(p.max), time.Since(p.t0).Seconds())
	}
}

func (p *progress) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}

// spinner shows an indeterminate bar on a terminal while one long call runs
// (nothing otherwise); the returned stop may be called more than once.
func spinner(w io.Writer, what string) (stop func()) {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return func() {}
	}
	bar := progressbar.NewOptions(-1, progressbar.OptionSetWriter(w), progressbar.OptionSetDescription(what),
		progressbar.OptionSpinnerType(14), progressbar.OptionClearOnFinish(), progressbar.OptionThrottle(100*time.Millisecond))
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = bar.Add(1)
			}
		}
	}()
	var once bool
	return func() {
		if !once {
			once = true
			close(done)
			_ = bar.Finish()
		}
	}
}

// tick advances p by one each time fn succeeds.
func tick(p *progress, fn func(i int) error) func(i int) error {
	return func(i int) error {
		err := fn(i)
		if err == nil {
			p.add(1)
		}
		return err
	}
}
