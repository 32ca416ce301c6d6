package daemon

import (
	"context"
	"log/slog"
	"time"

	sdd "github.com/coreos/go-systemd/v22/daemon"
)

// notifier speaks sd_notify when the daemon runs under systemd (NOTIFY_SOCKET
// set) and is silent otherwise.
type notifier struct{ log *slog.Logger }

func (n notifier) send(state string) {
	if _, err := sdd.SdNotify(false, state); err != nil {
		n.log.Warn("sd_notify failed", "state", state, "err", err)
	}
}

func (n notifier) ready()    { n.send(sdd.SdNotifyReady) }
func (n notifier) stopping() { n.send(sdd.SdNotifyStopping) }

// watchdog pings systemd at half the configured interval for as long as
// healthy reports true; an unhealthy daemon stops pinging so systemd
// restarts it.
func (n notifier) watchdog(ctx context.Context, healthy func() bool) {
	every, err := sdd.SdWatchdogEnabled(false)
	if err != nil || every <= 0 {
		return
	}
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if healthy() {
				n.send(sdd.SdNotifyWatchdog)
			}
		}
	}
}
