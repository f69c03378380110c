package main

import (
	"fmt"
	"image/color"
	"os"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var (
	colorSvc   = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	colorKube  = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
	colorFloor = color.RGBA{R: 0x55, G: 0x55, B: 0x55, A: 0xff}
)

// series collects (N, value) points of one line.
type series struct {
	label  string
	color  color.Color
	dashed bool
	shape  draw.GlyphDrawer
	pts    plotter.XYs
}

func (s *series) add(n int, v float64) {
	if v > 0 {
		s.pts = append(s.pts, plotter.XY{X: float64(n), Y: v})
	}
}

// writePlot draws cold start and programming latency against N for both
// proxies, log-log, side by side.
func writePlot(rep *Report, path string) error {
	cap := rep.Settings.CapSeconds
	coldSvc := &series{label: "svcproxy serving", color: colorSvc, shape: draw.CircleGlyph{}}
	coldKube := &series{label: "kube-proxy serving", color: colorKube, shape: draw.CircleGlyph{}}
	syncSvc := &series{label: "svcproxy first sync", color: colorSvc, dashed: true, shape: draw.SquareGlyph{}}
	syncKube := &series{label: "kube-proxy first sync", color: colorKube, dashed: true, shape: draw.SquareGlyph{}}
	floor := &series{label: "floor (bare restore)", color: colorFloor, dashed: true, shape: draw.TriangleGlyph{}}
	kubeCapped := false
	for _, n := range rep.Settings.Ns {
		if r := rep.find(SvcProxy, n); r != nil {
			coldSvc.add(n, phaseServing(&r.Cold, cap).v)
			syncSvc.add(n, phaseSync(&r.Cold, cap).v)
			if r.Floor != nil {
				floor.add(n, r.Floor.Best())
			}
		}
		if r := rep.find(KubeProxy, n); r != nil {
			v := phaseServing(&r.Cold, cap)
			coldKube.add(n, v.v)
			syncKube.add(n, phaseSync(&r.Cold, cap).v)
			kubeCapped = kubeCapped || v.lower
			if rep.find(SvcProxy, n) == nil && r.Floor != nil {
				floor.add(n, r.Floor.Best())
			}
		}
	}
	if kubeCapped {
		coldKube.label += fmt.Sprintf(" (at %.0f s: capped)", cap)
	}
	fast := rep.MinSync.Fast
	latSvc50 := &series{label: "svcproxy p50", color: colorSvc, shape: draw.CircleGlyph{}}
	latSvc99 := &series{label: "svcproxy p99", color: colorSvc, dashed: true, shape: draw.SquareGlyph{}}
	latKube50 := &series{label: "kube-proxy p50", color: colorKube, shape: draw.CircleGlyph{}}
	latKube99 := &series{label: "kube-proxy p99", color: colorKube, dashed: true, shape: draw.SquareGlyph{}}
	for _, n := range rep.Settings.Ns {
		if r := rep.find(SvcProxy, n); r != nil && r.LatFast != nil && len(r.LatFast.Samples) > 0 {
			latSvc50.add(n, r.LatFast.P50)
			latSvc99.add(n, r.LatFast.P99)
		}
		if r := rep.find(KubeProxy, n); r != nil && r.LatFast != nil && len(r.LatFast.Samples) > 0 {
			latKube50.add(n, r.LatFast.P50)
			latKube99.add(n, r.LatFast.P99)
		}
	}
	nmin, nmax := float64(slices.Min(rep.Settings.Ns)), float64(slices.Max(rep.Settings.Ns))
	p1, err := newPlot("Cold start (empty tables)", "seconds from process start", []*series{coldSvc, syncSvc, coldKube, syncKube, floor})
	if err != nil {
		return err
	}
	p2, err := newPlot("Programming latency (minSyncPeriod "+fast+")", "ms from API write to first connection", []*series{latSvc50, latSvc99, latKube50, latKube99})
	if err != nil {
		return err
	}
	for _, p := range []*plot.Plot{p1, p2} {
		p.X.Min, p.X.Max = nmin/1.5, nmax*1.5
	}
	const w, h = 12 * vg.Inch, 5 * vg.Inch
	img := vgimg.New(w, h)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 2, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align([][]*plot.Plot{{p1, p2}}, tiles, dc)
	p1.Draw(canvases[0][0])
	p2.Draw(canvases[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		return err
	}
	return f.Close()
}

func newPlot(title, ylabel string, ss []*series) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "N (Services x 10 endpoints)"
	p.Y.Label.Text = ylabel + " (log)"
	p.X.Scale = plot.LogScale{}
	p.Y.Scale = plot.LogScale{}
	p.X.Tick.Marker = nTicks{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs = vg.Points(8)
	p.Legend.YOffs = -vg.Points(8)
	ymin, ymax := 0.0, 0.0
	for _, s := range ss {
		for _, pt := range s.pts {
			if ymin == 0 || pt.Y < ymin {
				ymin = pt.Y
			}
			ymax = max(ymax, pt.Y)
		}
	}
	if ymax > 0 {
		// Room above for the legend; a single point still gets a range.
		p.Y.Min, p.Y.Max = ymin/2, ymax*8
	}
	for _, s := range ss {
		if len(s.pts) == 0 {
			continue
		}
		l, pts, err := plotter.NewLinePoints(s.pts)
		if err != nil {
			return nil, err
		}
		l.Color = s.color
		l.Width = vg.Points(1.5)
		if s.dashed {
			l.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
		}
		pts.Color = s.color
		pts.Shape = s.shape
		pts.Radius = vg.Points(3)
		p.Add(l, pts)
		p.Legend.Add(s.label, l, pts)
	}
	return p, nil
}

// nTicks labels the workload sizes on a log axis.
type nTicks struct{}

func (nTicks) Ticks(lo, hi float64) []plot.Tick {
	var out []plot.Tick
	for _, v := range []float64{100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000} {
		if v >= lo && v <= hi {
			out = append(out, plot.Tick{Value: v, Label: thousands(int(v))})
		}
	}
	return out
}
