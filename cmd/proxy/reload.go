package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"flag"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"svcproxy.dev/svcproxy/pkg/config"
)

// configPollInterval is how often the config file is checked for changes.
// Polling the content (not inotify) also sees a ConfigMap update, which
// swaps a symlink in the mounted directory rather than writing the file.
const configPollInterval = 2 * time.Second

// configSource is where the configuration comes from, for re-reading it.
type configSource struct {
	path string
	load func() (*v1alpha1.KubeProxyConfiguration, error)
	hup  <-chan os.Signal
	fs   *flag.FlagSet
}

// newConfigSource starts catching SIGHUP (whose default action would end
// the process) and returns the way to re-read what was read at start-up.
func newConfigSource(f *flags, fs *flag.FlagSet) configSource {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return configSource{
		path: f.configFile,
		load: func() (*v1alpha1.KubeProxyConfiguration, error) { return f.configuration(fs) },
		hup:  hup,
		fs:   fs,
	}
}

// setVerbosity applies logging.verbosity from the file, unless -v was
// given on the command line: as with every flag, the command line wins.
func (s configSource) setVerbosity(cfg *v1alpha1.KubeProxyConfiguration) {
	fromFlag := false
	s.fs.Visit(func(fl *flag.Flag) { fromFlag = fromFlag || fl.Name == "v" })
	if fromFlag || s.fs.Lookup("v") == nil {
		return
	}
	if err := s.fs.Lookup("v").Value.Set(strconv.FormatUint(uint64(cfg.Logging.Verbosity), 10)); err != nil {
		klog.ErrorS(err, "Setting log verbosity", "verbosity", cfg.Logging.Verbosity)
	}
}

// reloader re-reads the configuration on SIGHUP and when the file's content
// changes. Live settings go to apply; a change that needs a restart is
// logged, naming the field, and the running value stays in force.
type reloader struct {
	path    string                                           // the config file; "" when there is none
	load    func() (*v1alpha1.KubeProxyConfiguration, error) // the file plus command-line flags, validated
	apply   func(*v1alpha1.KubeProxyConfiguration)           // applies the live settings
	running *v1alpha1.KubeProxyConfiguration
	poll    time.Duration
}

// run serves reloads until ctx is done.
func (r *reloader) run(ctx context.Context, hup <-chan os.Signal) {
	// No fingerprint yet: the first poll re-reads the file, so that an edit
	// made while the proxy was starting (after it read the file) counts.
	var last []byte
	ticker := time.NewTicker(r.poll)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			last = r.fingerprint()
			r.reload("SIGHUP")
		case <-ticker.C:
			if r.path == "" {
				continue
			}
			if sum := r.fingerprint(); !bytes.Equal(sum, last) {
				last = sum
				r.reload("file changed")
			}
		}
	}
}

func (r *reloader) fingerprint() []byte {
	data, err := os.ReadFile(r.path)
	if err != nil {
		return nil // a file being replaced; the next poll sees the new one
	}
	sum := sha256.Sum256(data)
	return sum[:]
}

// reload re-reads the configuration and applies what can change live.
func (r *reloader) reload(trigger string) {
	next, err := r.load()
	if err != nil {
		klog.ErrorS(err, "Re-reading the configuration failed; keeping the running configuration", "trigger", trigger)
		return
	}
	changes, err := config.Changes(r.running, next)
	if err != nil {
		klog.ErrorS(err, "Comparing configurations", "trigger", trigger)
		return
	}
	live := 0
	for _, c := range changes {
		if c.Live {
			live++
			klog.InfoS("Configuration change applied", "field", c.Path, "old", c.Old, "new", c.New, "trigger", trigger)
			continue
		}
		klog.InfoS("Configuration change needs a restart to take effect; running with the old value until then",
			"field", c.Path, "running", c.Old, "file", c.New, "trigger", trigger)
	}
	klog.V(2).InfoS("Configuration re-read", "trigger", trigger, "changes", len(changes), "applied", live)
	if live == 0 {
		return
	}
	r.running = config.WithLive(r.running, next)
	r.apply(r.running)
}
