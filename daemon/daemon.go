package daemon

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flashmemory/flashmemory/indexer"
	"github.com/flashmemory/flashmemory/proto"
	"github.com/flashmemory/flashmemory/tiers"
)

// Version names this build in HELLO replies and logs.
var Version = "flashmemd/0.1"

// ErrShuttingDown is returned for requests that arrive after SIGTERM.
var ErrShuttingDown = errors.New("daemon shutting down")

// Daemon holds every subsystem of flashmemd. New builds them in order, Close
// tears them down in reverse: listener, connections, sessions, mover, tiers.
type Daemon struct {
	cfg    Config
	log    *slog.Logger
	m      *metrics
	access access

	store   *tiers.Store
	reserve *tiers.Reserve
	mover   *tiers.Mover
	// gpu holds NVML and the per-GPU reserves; reserve above is the host
	// (memfd) one, used where there is no CUDA device.
	gpu      *gpuSubsystem
	gpuHooks *gpuHooks
	// cl is the cluster membership ([cluster]); nil on a single host.
	cl *clusterState

	models map[string]indexer.Scorer
	kinds  map[string]string // model name → kindLSA, kindText, kindTrace

	ln        *net.UnixListener
	metricsLn net.Listener // bound in New, served by Run
	dataLock  *os.File     // flock on data_dir/flashmemd.lock
	activated bool
	instance  [16]byte
	started   time.Time

	mu       sync.Mutex
	sessions map[uint64]*session
	byName   map[string]*session
	conns    map[*conn]struct{}
	connsOf  map[uint32]int // connections per uid
	nextID   uint64
	// lost are persisted session names whose records this start found
	// missing from the journal (tiers.RecoveryReport.LostMetas), until a
	// session takes the name again: RESUME of one says it was lost.
	lost map[string]bool

	closing atomic.Bool
	// nextLease numbers leases (cycle replies, recalls in flight); atomic,
	// so the cycle path takes no daemon-wide lock for it.
	nextLease atomic.Uint64

	reserveHits, reserveMisses atomic.Uint64 // cycle-table pages found in / copied into the reserve
	connWG                     sync.WaitGroup
	admitting                  chan struct{} // a token per connection being admitted
	// accepting is set once Run started acceptLoop; acceptDone is closed
	// when that loop returned, so shutdown can let it drain the backlog.
	accepting  atomic.Bool
	acceptDone chan struct{}
	lingering  atomic.Int64 // refused connections being drained (refuse)
	bgCancel   context.CancelFunc
	bgWG       sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// Option adjusts New.
type Option func(*Daemon)

// WithLogger sets the daemon's logger (default: text to stderr).
func WithLogger(l *slog.Logger) Option { return func(d *Daemon) { d.log = l } }

// New opens the tiers, loads the indexer models, restores persisted
// sessions' metadata and listens on the control socket. It serves nothing
// until Run.
func New(cfg Config, opts ...Option) (_ *Daemon, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Daemon{
		cfg:        cfg,
		log:        slog.New(slog.NewTextHandler(os.Stderr, nil)),
		m:          newMetrics(),
		sessions:   map[uint64]*session{},
		byName:     map[string]*session{},
		conns:      map[*conn]struct{}{},
		connsOf:    map[uint32]int{},
		started:    time.Now(),
		admitting:  make(chan struct{}, maxPendingAdmissions),
		acceptDone: make(chan struct{}),
	}
	for _, o := range opts {
		o(d)
	}
	_, _ = rand.Read(d.instance[:])
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if d.access, err = newAccess(cfg.AllowedGroups, cfg.AdminGroups); err != nil {
		return nil, err
	}
	sockGID, err := socketGID(cfg)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	if d.dataLock, err = lockDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	if d.metricsLn, err = listenMetrics(cfg.Metrics); err != nil {
		return nil, err
	}
	if d.models, err = loadModels(cfg.Indexer); err != nil {
		return nil, err
	}
	d.kinds = modelKinds(cfg.Indexer)
	// Reserves and GPUs before the store: on GPU hosts the mirror's extents
	// are pinned through a device.
	d.reserve = tiers.NewReserve(tiers.ReserveConfig{Budget: cfg.Limits.MaxHostReserveBytes, MaxRegions: cfg.Limits.MaxSessions})
	hooks := realGPUHooks()
	if d.gpuHooks != nil {
		hooks = *d.gpuHooks
	}
	if d.gpu, err = openGPU(cfg.GPU, cfg.Limits.MaxSessions, d.reserve, d.log.With("subsystem", "gpu"), hooks); err != nil {
		return nil, err
	}
	d.gpu.wrapScorers(cfg.GPU, d.models)
	d.store, err = tiers.OpenStore(tiers.StoreConfig{
		Mirror: tiers.MirrorConfig{Budget: cfg.Host.BudgetBytes, Allocator: d.gpu.mirrorAllocator(cfg.GPU)},
		SSD: tiers.SSDConfig{
			Dir:          filepath.Join(cfg.DataDir, "ssd"),
			SyncWrites:   cfg.SSD.SyncWrites,
			GCInterval:   time.Duration(cfg.SSD.GCInterval),
			MinFreeBytes: cfg.SSD.MinFreeBytes,
			ReadMode:     cfg.SSD.ReadMode, ReadQueueDepth: cfg.SSD.ReadQueueDepth,
			MergeMeta: mergeMeta,
		},
		Logger: d.log.With("tier", "store"),
	})
	if err != nil {
		return nil, fmt.Errorf("host mirror and SSD tiers: %w", err)
	}
	d.mover = tiers.NewMover(d.store, tiers.MoverConfig{Workers: cfg.Mover.Workers, StageWorkers: cfg.Mover.StageWorkers, StageBytes: cfg.Mover.StageBytes})
	if err := d.restoreIDs(); err != nil {
		return nil, err
	}
	if err := d.openCluster(); err != nil {
		return nil, err
	}
	d.ln, d.activated, err = listen(cfg.Socket, sockGID)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	d.log.Info("flashmemd ready to serve", "socket", d.ln.Addr().String(), "socket_activated", d.activated,
		"data_dir", cfg.DataDir, "host_budget", cfg.Host.BudgetBytes, "models", len(d.models), "ssd_read_mode", d.store.SSD().ReadMode())
	return d, nil
}

// Addr is the control socket's path.
func (d *Daemon) Addr() string { return d.ln.Addr().String() }

// Run serves connections until ctx ends, then shuts down gracefully: stop
// accepting, let in-flight frames finish, flush persisted sessions to SSD.
func (d *Daemon) Run(ctx context.Context) error {
	bg, cancel := context.WithCancel(context.Background())
	d.bgCancel = cancel
	stopMetrics := serveMetrics(d.log, d.metricsLn, d.m.reg, d.healthy)
	d.metricsLn = nil // the server closes it
	defer stopMetrics()
	var err error
	d.m.reg.MustRegister(&tierCollector{d: d}, &gpuCollector{g: d.gpu})
	d.gpu.run(bg, &d.bgWG)
	n := notifier{log: d.log}
	d.bgWG.Add(2)
	go func() { defer d.bgWG.Done(); n.watchdog(bg, func() bool { return d.healthy() == nil }) }()
	go func() { defer d.bgWG.Done(); d.leaseJanitor(bg) }()

	acceptErr := make(chan error, 1)
	d.accepting.Store(true)
	go func() { acceptErr <- d.acceptLoop(); close(d.acceptDone) }()
	n.ready()
	d.log.Info("serving", "socket", d.Addr())

	select {
	case <-ctx.Done():
	case err = <-acceptErr:
	}
	n.stopping()
	d.log.Info("shutting down")
	d.shutdown()
	cancel()
	d.bgWG.Wait()
	return err
}

// shutdown stops accepting, closes client connections once their in-flight
// frames are answered, and flushes persisted sessions.
func (d *Daemon) shutdown() {
	if !d.closing.CompareAndSwap(false, true) {
		return
	}
	if d.ln != nil {
		// Clients that connected just before the signal sit in the kernel's
		// accept backlog; closing the socket would reset them with no word.
		// The accept loop takes them for acceptDrain more and tells each
		// SHUTTING_DOWN, so every client learns why and when to come back.
		// Not under socket activation: systemd holds the socket, its backlog
		// outlives this process and the next start serves it.
		if !d.activated {
			_ = d.ln.SetDeadline(time.Now().Add(acceptDrain))
			if d.accepting.Load() {
				select {
				case <-d.acceptDone:
				case <-time.After(acceptDrain + time.Second):
				}
			}
		}
		d.ln.Close()
	}
	d.mu.Lock()
	for c := range d.conns {
		c.stop()
	}
	d.mu.Unlock()
	done := make(chan struct{})
	go func() { d.connWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Duration(d.cfg.ShutdownTimeout)):
		d.log.Warn("connections did not finish before the shutdown timeout")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(d.cfg.ShutdownTimeout))
	defer cancel()
	d.mu.Lock()
	all := make([]*session, 0, len(d.sessions))
	for _, s := range d.sessions {
		all = append(all, s)
	}
	d.mu.Unlock()
	for _, s := range all {
		if s.persisted() {
			if err := d.persistSession(ctx, s); err != nil {
				d.log.Error("persist on shutdown failed", "session", s.id, "name", s.name, "err", err)
			}
		}
	}
}

// Close releases everything New acquired, in reverse order. Safe to call
// more than once and after a failed New.
func (d *Daemon) Close() error {
	d.closeOnce.Do(func() {
		d.shutdown()
		if d.bgCancel != nil {
			d.bgCancel()
		}
		d.bgWG.Wait()
		var errs []error
		// The mover first: no copy may still target a region being freed.
		if d.mover != nil {
			d.mover.Close()
		}
		d.mu.Lock()
		for _, s := range d.sessions {
			s.destroyRegion(d)
		}
		d.mu.Unlock()
		d.closeCluster() // its peer port reads the store
		// The store before the GPUs: a pinned mirror unregisters its extents
		// through a device.
		if d.store != nil {
			errs = append(errs, d.store.Close())
		}
		errs = append(errs, d.gpu.Close())
		if d.reserve != nil {
			errs = append(errs, d.reserve.Close())
		}
		if d.metricsLn != nil {
			d.metricsLn.Close()
		}
		if d.dataLock != nil {
			d.dataLock.Close() // last: the data directory is free for another daemon
		}
		d.closeErr = errors.Join(errs...)
	})
	return d.closeErr
}

func (d *Daemon) healthy() error {
	if d.closing.Load() {
		return ErrShuttingDown
	}
	return d.gpu.healthy()
}

func (d *Daemon) acceptLoop() error {
	for {
		uc, err := d.ln.AcceptUnix()
		if err != nil {
			if d.closing.Load() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		// Admission (peer credentials, group lookups through NSS, which can
		// be slow) runs on its own goroutine so one slow lookup does not hold
		// up every other connection; at most maxPendingAdmissions at once, so
		// a burst while NSS is slow cannot pile up file descriptors.
		d.admitting <- struct{}{}
		d.mu.Lock()
		if d.closing.Load() {
			d.mu.Unlock()
			<-d.admitting
			d.refuse(uc, proto.CodeShuttingDown.Errorf("daemon is shutting down; connect again once it has restarted"))
			continue // the rest of the backlog, until shutdown's deadline
		}
		d.connWG.Add(1)
		d.mu.Unlock()
		go func() {
			defer d.connWG.Done()
			d.admit(uc)
		}()
	}
}

// admit checks a new connection's peer and limits, then serves it until it
// ends. It runs under one count of connWG.
func (d *Daemon) admit(uc *net.UnixConn) {
	cred, err := peerCred(uc)
	if err == nil {
		err = d.access.allow(cred)
	}
	<-d.admitting
	if err != nil {
		d.m.rejectedConns.Inc()
		d.log.Warn("connection refused", "err", err)
		d.refuse(uc, proto.CodePermissionDenied.Errorf("%v", err))
		return
	}
	d.mu.Lock()
	var refusal error
	if d.closing.Load() {
		refusal = proto.CodeShuttingDown.Errorf("daemon is shutting down; connect again once it has restarted")
	} else {
		refusal = admission(d.cfg.Limits, d.access.admin(cred), cred.UID, len(d.conns), d.connsOf[cred.UID])
	}
	if refusal != nil {
		d.mu.Unlock()
		d.m.rejectedConns.Inc()
		d.log.Debug("connection refused", "uid", cred.UID, "pid", cred.PID, "err", refusal)
		d.refuse(uc, refusal)
		return
	}
	c := newConn(d, uc, cred)
	d.conns[c] = struct{}{}
	d.connsOf[cred.UID]++
	d.mu.Unlock()
	d.m.connections.Inc()
	c.serve()
	d.mu.Lock()
	delete(d.conns, c)
	if d.connsOf[cred.UID]--; d.connsOf[cred.UID] <= 0 {
		delete(d.connsOf, cred.UID)
	}
	d.mu.Unlock()
	d.m.connections.Dec()
}

// admission decides whether a peer may take a connection slot, given the
// connections served (total) and those of its uid (mine). The last
// admin_reserved_conns slots of max_conns are kept for root and
// admin_groups, who may also go that far past max_conns_per_uid: however
// many users flood the daemon, an operator can still connect and look.
func admission(lim Limits, admin bool, uid uint32, total, mine int) error {
	res := lim.AdminReservedConns
	switch {
	case total >= lim.MaxConns:
		return proto.CodeLimitExceeded.Errorf("too many connections (limits.max_conns %d); retry later", lim.MaxConns)
	case !admin && total >= lim.MaxConns-res:
		return proto.CodeLimitExceeded.Errorf("too many connections (limits.max_conns %d, of which limits.admin_reserved_conns %d are kept for root and admin_groups); retry later", lim.MaxConns, res)
	case !admin && mine >= lim.MaxConnsPerUID:
		return proto.CodeLimitExceeded.Errorf("uid %d holds %d connections (limits.max_conns_per_uid %d); close some and retry", uid, mine, lim.MaxConnsPerUID)
	case admin && mine >= lim.MaxConnsPerUID+res:
		return proto.CodeLimitExceeded.Errorf("uid %d holds %d connections (limits.max_conns_per_uid %d, plus limits.admin_reserved_conns %d for root and admin_groups); close some and retry", uid, mine, lim.MaxConnsPerUID, res)
	}
	return nil
}

// refuse answers a connection the daemon will not serve with one error
// frame of request id 0 and op 0, then closes it so the client can still
// read the frame: the write side is shut (the client reads the frame, then
// EOF) and whatever the client already sent (say its HELLO) is read and
// dropped for up to refuseLinger, so its writes do not fail with EPIPE
// before it gets to read. At most maxLingering connections linger at once;
// past that they are closed at once.
func (d *Daemon) refuse(uc *net.UnixConn, err error) {
	_ = uc.SetWriteDeadline(time.Now().Add(time.Second))
	pc := proto.NewConn(uc, d.cfg.Limits.MaxFrameBytes)
	_ = pc.ReplyError(proto.Header{}, err)
	_ = uc.CloseWrite()
	if d.lingering.Add(1) > maxLingering {
		d.lingering.Add(-1)
		closeQuietly(uc)
		return
	}
	go func() {
		defer d.lingering.Add(-1)
		defer closeQuietly(uc)
		_ = uc.SetReadDeadline(time.Now().Add(refuseLinger))
		_, _ = io.Copy(io.Discard, io.LimitReader(uc, maxLingerBytes))
	}()
}

const (
	// acceptDrain is how long a shutting-down daemon keeps accepting, to
	// answer the connections already queued with SHUTTING_DOWN.
	acceptDrain = 50 * time.Millisecond
	// maxPendingAdmissions bounds connections accepted but not yet admitted.
	maxPendingAdmissions = 64
	// A refused connection is drained for at most refuseLinger and
	// maxLingerBytes; at most maxLingering are at once.
	refuseLinger   = 2 * time.Second
	maxLingerBytes = 1 << 20
	maxLingering   = 256
)

// closeQuietly closes c, ignoring the error: used on paths already failing.
func closeQuietly(c io.Closer) { _ = c.Close() }
