package web

import (
	"fmt"

	"github.com/forgeci/forge"
)

// graph is a build's needs DAG laid out for an inline SVG: jobs in columns
// by depth (a job sits one column right of the deepest job it needs),
// edges as curves from a needed job to the job needing it.
type graph struct {
	Width, Height int
	Nodes         []node
	Edges         []edge
}

type node struct {
	Job          *forge.BuildJob
	X, Y         int
	Href         string
	TextX, TextY int
}

type edge struct{ Path string }

const (
	nodeW, nodeH = 180, 40
	gapX, gapY   = 60, 16
	pad          = 8
)

// layoutGraph places jobs; href is the prefix of a job page's URL.
func layoutGraph(jobs []*forge.BuildJob, href string) *graph {
	byName := map[string]*forge.BuildJob{}
	for _, j := range jobs {
		byName[j.Name] = j
	}
	depth := map[string]int{}
	var depthOf func(j *forge.BuildJob, seen map[string]bool) int
	depthOf = func(j *forge.BuildJob, seen map[string]bool) int {
		if d, ok := depth[j.Name]; ok {
			return d
		}
		if seen[j.Name] { // a cycle cannot pass the linter; draw it flat anyway
			return 0
		}
		seen[j.Name] = true
		d := 0
		for _, n := range j.Needs {
			if p := byName[n]; p != nil {
				d = max(d, depthOf(p, seen)+1)
			}
		}
		depth[j.Name] = d
		return d
	}
	rows := map[int]int{}
	pos := map[string]node{}
	g := &graph{}
	for _, j := range jobs {
		d := depthOf(j, map[string]bool{})
		x, y := pad+d*(nodeW+gapX), pad+rows[d]*(nodeH+gapY)
		rows[d]++
		n := node{Job: j, X: x, Y: y, Href: fmt.Sprintf("%s%d", href, j.ID), TextX: x + 12, TextY: y + nodeH/2 + 5}
		pos[j.Name] = n
		g.Nodes = append(g.Nodes, n)
		g.Width = max(g.Width, x+nodeW+pad)
		g.Height = max(g.Height, y+nodeH+pad)
	}
	for _, j := range jobs {
		to := pos[j.Name]
		for _, need := range j.Needs {
			from, ok := pos[need]
			if !ok {
				continue
			}
			x1, y1 := from.X+nodeW, from.Y+nodeH/2
			x2, y2 := to.X, to.Y+nodeH/2
			g.Edges = append(g.Edges, edge{Path: fmt.Sprintf("M%d %d C%d %d %d %d %d %d", x1, y1, x1+gapX/2, y1, x2-gapX/2, y2, x2, y2)})
		}
	}
	return g
}
