package controlplane

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"svcproxy.dev/svcproxy/e2e/nsutil"
)

// Fault helpers: stop and start the control plane's processes in place, and
// write straight into etcd. They keep each process's command line and data
// directory, so a restarted API server or etcd serves the same cluster.
// They are not safe for concurrent use with each other or with Stop.

// proc returns the index of the running or stopped process named name
// ("etcd" or "kube-apiserver") in c.procs.
func (c *ControlPlane) proc(name string) (int, error) {
	for i, p := range c.procs {
		if len(p.Cmd.Args) > 4 && filepath.Base(p.Cmd.Args[4]) == name {
			return i, nil
		}
	}
	return -1, fmt.Errorf("controlplane: no %s process", name)
}

// stopProc stops a process (SIGTERM, then SIGKILL after grace) and leaves
// it in c.procs so that startAgain can run the same command line.
func (c *ControlPlane) stopProc(name string, grace time.Duration) error {
	i, err := c.proc(name)
	if err != nil {
		return err
	}
	c.procs[i].Stop(grace)
	return nil
}

// startAgain reruns a stopped process with its original command line, its
// output appended to the same log file.
func (c *ControlPlane) startAgain(name string) error {
	i, err := c.proc(name)
	if err != nil {
		return err
	}
	old := c.procs[i]
	if !old.Exited() {
		return fmt.Errorf("controlplane: %s is still running", name)
	}
	logf, err := os.OpenFile(filepath.Join(c.Dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "\n===== restarted at %s =====\n", time.Now().Format(time.RFC3339Nano))
	args := old.Cmd.Args[4:]
	p, err := nsutil.StartIn(c.Netns, logf, args[0], args[1:]...)
	if err != nil {
		return err
	}
	c.procs[i] = p
	return nil
}

// StopAPIServer stops kube-apiserver (SIGTERM, SIGKILL after 10 s); etcd
// keeps running. Clients get connection refused until StartAPIServer.
func (c *ControlPlane) StopAPIServer() error { return c.stopProc("kube-apiserver", 10*time.Second) }

// StartAPIServer starts kube-apiserver again after StopAPIServer, with the
// same flags, and waits until it reports ready.
func (c *ControlPlane) StartAPIServer(ctx context.Context) error {
	if err := c.startAgain("kube-apiserver"); err != nil {
		return err
	}
	return c.waitReady(ctx, 90*time.Second)
}

// StopEtcd stops etcd (SIGTERM, SIGKILL after 10 s); the API server keeps
// running and fails its storage calls until StartEtcd.
func (c *ControlPlane) StopEtcd() error { return c.stopProc("etcd", 10*time.Second) }

// StartEtcd starts etcd again on its data directory and waits until the API
// server reports ready again.
func (c *ControlPlane) StartEtcd(ctx context.Context) error {
	if err := c.startAgain("etcd"); err != nil {
		return err
	}
	return c.waitReady(ctx, 90*time.Second)
}

// RestartEtcd stops etcd, keeps it down for down, and starts it again.
func (c *ControlPlane) RestartEtcd(ctx context.Context, down time.Duration) error {
	if err := c.StopEtcd(); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(down):
	}
	return c.StartEtcd(ctx)
}

// etcdCall posts a JSON request to etcd's gRPC gateway on the control
// plane's loopback and decodes the JSON answer into out.
func (c *ControlPlane) etcdCall(ctx context.Context, path string, req, out any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: c.DialContext}}
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://127.0.0.1:2379"+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	r.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(r)
	if err != nil {
		return fmt.Errorf("etcd %s: %w", path, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd %s: %s: %s", path, resp.Status, msg)
	}
	if out != nil {
		return json.Unmarshal(msg, out)
	}
	return nil
}

type etcdHeader struct {
	Header struct {
		Revision string `json:"revision"`
	} `json:"header"`
}

// EtcdPut stores obj as JSON under key straight in etcd, bypassing the API
// server and its validation (the API server decodes JSON values as well as
// its own protobuf). It works while the API server is down, and returns
// etcd's revision after the write. Keys look like
// "/registry/services/specs/NS/NAME" and "/registry/endpointslices/NS/NAME".
func (c *ControlPlane) EtcdPut(ctx context.Context, key string, obj any) (int64, error) {
	value, err := json.Marshal(obj)
	if err != nil {
		return 0, err
	}
	var out etcdHeader
	err = c.etcdCall(ctx, "/v3/kv/put", map[string]string{
		"key":   base64.StdEncoding.EncodeToString([]byte(key)),
		"value": base64.StdEncoding.EncodeToString(value),
	}, &out)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(out.Header.Revision, 10, 64)
}

// EtcdCompact compacts etcd's history up to revision, so that no watch can
// resume from an older revision: a client that was watching before has to
// list again.
func (c *ControlPlane) EtcdCompact(ctx context.Context, revision int64) error {
	return c.etcdCall(ctx, "/v3/kv/compaction", map[string]any{"revision": strconv.FormatInt(revision, 10), "physical": true}, nil)
}
