package cluster

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// dirStore is a Store on plain files (one per page, fsynced) for tests of
// this package; the daemon's adapter over tiers is tested in daemon/.
// Its metadata blob is JSON {"gens": [...]}.
type dirStore struct {
	dir string
	mu  sync.Mutex
}

type dirMeta struct {
	Gens []uint64 `json:"gens"`
	Note string   `json:"note"`
}

func (d *dirStore) path(name string, parts ...string) string {
	return filepath.Join(append([]string{d.dir, name}, parts...)...)
}

func (d *dirStore) Meta(_ context.Context, name string) ([]byte, []uint64, error) {
	b, err := os.ReadFile(d.path(name, "meta"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err != nil {
		return nil, nil, err
	}
	var m dirMeta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, nil, err
	}
	return b, m.Gens, nil
}

func (d *dirStore) ReadPage(_ context.Context, name string, page uint32) (uint64, []byte, error) {
	b, err := os.ReadFile(d.path(name, fmt.Sprintf("p%d", page)))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil, fmt.Errorf("%w: page %d", ErrNotFound, page)
	}
	if err != nil {
		return 0, nil, err
	}
	if len(b) < 12 || Checksum(b[12:]) != binary.LittleEndian.Uint32(b[8:]) {
		return 0, nil, fmt.Errorf("%w: page %d of %s on disk", ErrChecksum, page, name)
	}
	return binary.LittleEndian.Uint64(b), b[12:], nil
}

func writeSync(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.Create(path + ".tmp")
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

func (d *dirStore) WritePages(_ context.Context, name string, pages []PageData) error {
	for _, p := range pages {
		b := binary.LittleEndian.AppendUint64(nil, p.Gen)
		b = binary.LittleEndian.AppendUint32(b, Checksum(p.Data))
		if err := writeSync(d.path(name, fmt.Sprintf("p%d", p.Page)), append(b, p.Data...)); err != nil {
			return err
		}
	}
	return nil
}

func (d *dirStore) WriteMeta(_ context.Context, name string, meta []byte) error {
	return writeSync(d.path(name, "meta"), meta)
}

func (d *dirStore) Delete(_ context.Context, name string) error {
	return os.RemoveAll(d.path(name))
}

// put writes a session locally as an owner would before persisting.
func (d *dirStore) put(name string, pages [][]byte, gens []uint64, note string) error {
	var pd []PageData
	for i, p := range pages {
		pd = append(pd, PageData{PageInfo: PageInfo{Page: uint32(i), Gen: gens[i]}, Data: p})
	}
	if err := d.WritePages(context.Background(), name, pd); err != nil {
		return err
	}
	b, _ := json.Marshal(dirMeta{Gens: gens, Note: note})
	return d.WriteMeta(context.Background(), name, b)
}
