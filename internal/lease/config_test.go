package lease

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/forgeci/forge"
)

func TestConfigFromYAML(t *testing.T) {
	src := `
keepalive: 3s
fill_max_passes: 4
fill_max_wait: 1m
pools:
  dut:
    resources:
      - {id: dut1, host: 10.0.0.5, labels: {arch: arm64}}
      - {id: dut2, host: 10.0.0.6, port: 22, labels: {arch: amd64}, disabled: true}
      - id: dut3
        attributes: {serial: "0042"}
  ports:
    order: fill
    range: 20000-20999
    labels: {kind: tcp}
`
	pools, c := poolsFromYAML(t, src)
	if c.Keepalive != 3*time.Second || c.FillMaxPasses != 4 || c.FillMaxWait != time.Minute {
		t.Fatalf("options: got %+v", c)
	}
	if c.KeepaliveOrDefault() != 3*time.Second || (&Config{}).KeepaliveOrDefault() != DefaultKeepalive {
		t.Fatalf("KeepaliveOrDefault wrong")
	}
	if len(pools) != 2 || pools[0].Name != "dut" || pools[1].Name != "ports" {
		t.Fatalf("pools: got %d, want dut and ports sorted", len(pools))
	}
	dut := pools[0]
	if dut.Order != OrderFIFO || len(dut.Resources) != 3 {
		t.Fatalf("dut: got order %q and %d resources", dut.Order, len(dut.Resources))
	}
	r1, r2, r3 := dut.Resources[0], dut.Resources[1], dut.Resources[2]
	if r1.ID != "dut1" || r1.Attributes["host"] != "10.0.0.5" || r1.Labels["arch"] != "arm64" || r1.Disabled {
		t.Errorf("dut1: got %+v", r1)
	}
	if r2.Attributes["port"] != "22" || !r2.Disabled || r2.Labels["arch"] != "amd64" {
		t.Errorf("dut2: got %+v", r2)
	}
	if r3.Attributes["serial"] != "0042" {
		t.Errorf("dut3: got %+v, want serial 0042", r3)
	}
	ports := pools[1]
	if ports.Order != OrderFill || len(ports.Resources) != 1000 || ports.Resources[0].ID != "20000" || ports.Resources[999].ID != "20999" || ports.Resources[5].Labels["kind"] != "tcp" {
		t.Errorf("ports: got order %q, %d resources, first %+v", ports.Order, len(ports.Resources), ports.Resources[0])
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct{ name, src, want string }{
		{"duplicate id", "pools: {p: {resources: [{id: a}, {id: a}]}}", `duplicate resource id "a"`},
		{"range clash", "pools: {p: {range: 1-3, resources: [{id: \"2\"}]}}", `duplicate resource id "2"`},
		{"bad range", "pools: {p: {range: 20000-}}", `range "20000-"`},
		{"not a range", "pools: {p: {range: many}}", `want LOW-HIGH`},
		{"reversed range", "pools: {p: {range: 10-1}}", "low end 10 is above high end 1"},
		{"huge range", "pools: {p: {range: 0-9999999}}", "more than the limit"},
		{"unknown order", "pools: {p: {order: lifo, range: 1-2}}", `unknown order "lifo"`},
		{"bad pool name", "pools: {\"a b\": {range: 1-2}}", `pool name "a b"`},
		{"slash in id", "pools: {p: {resources: [{id: a/b}]}}", `resource id "a/b"`},
		{"short keepalive", "keepalive: 500ms\npools: {}", "below the minimum"},
		{"negative passes", "fill_max_passes: -1\npools: {}", "fill_max_passes -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Config
			if err := yaml.Unmarshal([]byte(tc.src), &c); err != nil {
				t.Fatalf("yaml: %v", err)
			}
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if _, err := c.BuildPools(); tc.name != "short keepalive" && tc.name != "negative passes" && err == nil {
				t.Fatalf("BuildPools accepted it")
			}
		})
	}
	// Problems in the resource form itself surface from the YAML decoder.
	for _, tc := range []struct{ name, src, want string }{
		{"no id", "pools: {p: {resources: [{host: h}]}}", "without an id"},
		{"nested attribute", "pools: {p: {resources: [{id: a, host: {x: 1}}]}}", `attribute "host"`},
		{"labels not a map", "pools: {p: {resources: [{id: a, labels: [x]}]}}", "labels must be a mapping"},
		{"not a mapping", "pools: {p: {resources: [dut1]}}", "must be a mapping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Config
			err := yaml.Unmarshal([]byte(tc.src), &c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestResourceConfigJSONRoundTrip(t *testing.T) {
	in := `{"id":"dut1","host":"10.0.0.5","port":22,"attributes":{"serial":"7"},"labels":{"arch":"arm64"},"disabled":true}`
	var r ResourceConfig
	if err := json.Unmarshal([]byte(in), &r); err != nil {
		t.Fatal(err)
	}
	want := ResourceConfig{ID: "dut1", Attributes: map[string]string{"host": "10.0.0.5", "port": "22", "serial": "7"},
		Labels: map[string]string{"arch": "arm64"}, Disabled: true}
	got, _ := json.Marshal(r)
	wantJSON, _ := json.Marshal(want)
	if string(got) != string(wantJSON) {
		t.Fatalf("got %s, want %s", got, wantJSON)
	}
	var back ResourceConfig
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatal(err)
	}
	again, _ := json.Marshal(back)
	if string(again) != string(got) {
		t.Fatalf("round trip: got %s, want %s", again, got)
	}
}

func TestEmptyOrderIsFIFO(t *testing.T) {
	m, err := NewMemory([]*forge.Pool{{Name: "dut", Resources: []*forge.Resource{{ID: "d1"}}}}, MemoryOptions{})
	if err != nil {
		t.Fatalf("NewMemory with no order: %v", err)
	}
	defer m.Close()
	pools, err := m.Pools(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(pools) != 1 || pools[0].Order != OrderFIFO {
		t.Fatalf("got pools %+v, want one fifo pool", pools)
	}
}

// TestPoolMaxGraceConfig: max_grace is a positive duration; a bad one
// names the pool and the value.
func TestPoolMaxGraceConfig(t *testing.T) {
	pc := PoolConfig{Range: "1-1", MaxGrace: "45s"}
	p, err := pc.Pool("dut")
	if err != nil || p.MaxGrace != 45*time.Second {
		t.Fatalf("max_grace 45s: %v, %v", p, err)
	}
	for _, bad := range []string{"soon", "-1s", "0s"} {
		pc := PoolConfig{Range: "1-1", MaxGrace: bad}
		_, err := pc.Pool("dut")
		if forge.ErrorCode(err) != forge.EINVALID || !strings.Contains(forge.ErrorMessage(err), `pool "dut": max_grace "`+bad+`"`) {
			t.Errorf("max_grace %q: got %v, want an error naming the pool and the value", bad, err)
		}
	}
	p, err = DecodePool("dut", strings.NewReader(`{"range":"1-2","max_grace":"2m"}`))
	if err != nil || p.MaxGrace != 2*time.Minute {
		t.Fatalf("REST body with max_grace: %v, %v", p, err)
	}
}
