package nsutil

import (
	"fmt"
	"io"
	"os/exec"
	"syscall"
	"time"
)

// Proc is a started child process whose exit is observed by one goroutine,
// so callers can ask whether it is still running without racing on Wait.
type Proc struct {
	Cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// StartIn starts a program inside namespace ns with stdout and stderr sent
// to out (nil discards).
func StartIn(ns string, out io.Writer, name string, args ...string) (*Proc, error) {
	cmd := Exec(ns, name, args...)
	cmd.Stdout = out
	cmd.Stderr = out
	return Start(cmd)
}

// Start starts cmd and begins watching for its exit.
func Start(cmd *exec.Cmd) (*Proc, error) {
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p := &Proc{Cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done is closed when the process has ended.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err returns the exit error once the process has ended.
func (p *Proc) Err() error {
	<-p.done
	return p.err
}

// Stop sends SIGTERM, waits up to grace for the exit, then SIGKILLs the
// process and its group (children such as iptables-restore go too).
func (p *Proc) Stop(grace time.Duration) {
	if p == nil || p.Cmd.Process == nil {
		return
	}
	pid := p.Cmd.Process.Pid
	_ = syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(pid, syscall.SIGKILL)
		<-p.done
	}
	// Anything the process started in its group goes too.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
}

// Kill ends the process and its group at once.
func (p *Proc) Kill() {
	if p == nil || p.Cmd.Process == nil {
		return
	}
	pid := p.Cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = syscall.Kill(pid, syscall.SIGKILL)
	<-p.done
}
