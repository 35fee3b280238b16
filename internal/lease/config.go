package lease

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/forgeci/forge"
)

// Pool orders.
const (
	// OrderFIFO serves requests strictly first come, first served.
	OrderFIFO = "fifo"
	// OrderFill lets a later request pass an earlier one that cannot be
	// served yet, within the bounds of Config.FillMaxPasses and
	// Config.FillMaxWait.
	OrderFill = "fill"
)

// Limits on names and sizes, checked by Validate and by the Manager.
const (
	maxPoolName    = 64
	maxResourceID  = 128
	maxRangeSize   = 100000
	maxLabelLength = 256

	// DefaultKeepalive is how long a silent connection keeps its leases.
	DefaultKeepalive = 10 * time.Second
	// MinKeepalive is the smallest keepalive bound accepted.
	MinKeepalive = time.Second
	// DefaultFillMaxPasses bounds how often a waiter in an "order: fill"
	// pool may be passed over by later requests.
	DefaultFillMaxPasses = 10
	// DefaultFillMaxWait bounds for how long a waiter in an "order: fill"
	// pool may be passed over, counted from the first time it was.
	DefaultFillMaxWait = 30 * time.Second
)

// Config is the lease part of the server's configuration file:
//
//	pools:
//	  dut:
//	    resources:
//	      - {id: dut1, host: 10.0.0.5, labels: {arch: arm64}}
//	  ports:
//	    range: 20000-20999
//	keepalive: 10s
type Config struct {
	// Pools maps a pool name to its declaration.
	Pools map[string]PoolConfig `yaml:"pools" json:"pools"`
	// Keepalive is how long a connection may stay silent (no pong) before
	// it is dropped and its leases released; default 10s, at least 1s.
	Keepalive time.Duration `yaml:"keepalive" json:"keepalive"`
	// FillMaxPasses is how many times a waiter in an "order: fill" pool
	// may be passed over by later requests before it is served strictly in
	// turn; default 10.
	FillMaxPasses int `yaml:"fill_max_passes" json:"fill_max_passes"`
	// FillMaxWait is for how long (since it was first passed over) a
	// waiter in an "order: fill" pool may be passed over; default 30s.
	FillMaxWait time.Duration `yaml:"fill_max_wait" json:"fill_max_wait"`
	// Grace is how long a resumable session's leases wait for its client
	// to reconnect when the client asks for no grace of its own; default
	// 15s. MaxGrace bounds what a client may ask for; default 5m.
	Grace    time.Duration `yaml:"grace" json:"grace"`
	MaxGrace time.Duration `yaml:"max_grace" json:"max_grace"`
	// PoolPrecedence says which wins when the file and the store both
	// define a pool: "store" (the default: edits made through the API
	// survive restarts) or "config" (the file's pools are reset to it at
	// every start). See SeedPools.
	PoolPrecedence string `yaml:"pool_precedence" json:"pool_precedence"`
}

// PoolConfig declares one pool: listed resources, a generated range, or
// both.
type PoolConfig struct {
	// Order is "fifo" (the default) or "fill".
	Order string `yaml:"order" json:"order,omitempty"`
	// Range generates one resource per integer of "LOW-HIGH", inclusive
	// (e.g. "20000-20999"); the integer is the resource's id.
	Range string `yaml:"range" json:"range,omitempty"`
	// Resources lists resources one by one.
	Resources []ResourceConfig `yaml:"resources" json:"resources,omitempty"`
	// Labels are given to every resource of the pool (a resource's own
	// labels win).
	Labels map[string]string `yaml:"labels" json:"labels,omitempty"`
	// MaxGrace bounds the grace of a resumable session holding or waiting
	// for the pool's resources, as a Go duration ("30s"); empty: only the
	// server's max_grace.
	MaxGrace string `yaml:"max_grace" json:"max_grace,omitempty"`
	// Check is the pool's health check (health.go).
	Check *CheckConfig `yaml:"check" json:"check,omitempty"`
}

// ResourceConfig declares one listed resource. In YAML and JSON it is a
// mapping with an "id", optional "labels" (a mapping), optional
// "disabled" (a boolean), optional "attributes" (a mapping), and any other
// key with a scalar value as a further attribute:
//
//	{id: dut1, host: 10.0.0.5, labels: {arch: arm64}}
type ResourceConfig struct {
	ID         string
	Attributes map[string]string
	Labels     map[string]string
	Disabled   bool
}

// UnmarshalYAML reads the inline form (used by goccy/go-yaml).
func (r *ResourceConfig) UnmarshalYAML(unmarshal func(any) error) error {
	var m map[string]any
	if err := unmarshal(&m); err != nil {
		return fmt.Errorf("a resource must be a mapping like {id: dut1, host: 10.0.0.5}: %w", err)
	}
	return r.fromMap(m)
}

// UnmarshalJSON reads the inline form.
func (r *ResourceConfig) UnmarshalJSON(data []byte) error {
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("a resource must be an object like {\"id\":\"dut1\",\"host\":\"10.0.0.5\"}: %w", err)
	}
	if m == nil {
		return fmt.Errorf("a resource must be an object, not null")
	}
	return r.fromMap(m)
}

// MarshalJSON writes the inline form with attributes under "attributes".
func (r ResourceConfig) MarshalJSON() ([]byte, error) {
	m := map[string]any{"id": r.ID}
	if len(r.Attributes) > 0 {
		m["attributes"] = r.Attributes
	}
	if len(r.Labels) > 0 {
		m["labels"] = r.Labels
	}
	if r.Disabled {
		m["disabled"] = true
	}
	return json.Marshal(m)
}

func (r *ResourceConfig) fromMap(m map[string]any) error {
	*r = ResourceConfig{}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := m[k]
		switch k {
		case "id":
			s, ok := scalarString(v)
			if !ok || s == "" {
				return fmt.Errorf("resource id must be a non-empty string, got %s", describe(v))
			}
			r.ID = s
		case "labels", "attributes":
			sm, err := stringMap(k, v)
			if err != nil {
				return fmt.Errorf("resource %q: %w", idOf(m), err)
			}
			if k == "labels" {
				r.Labels = sm
			} else {
				for ak, av := range sm {
					if r.Attributes == nil {
						r.Attributes = map[string]string{}
					}
					r.Attributes[ak] = av
				}
			}
		case "disabled":
			b, ok := v.(bool)
			if !ok {
				return fmt.Errorf("resource %q: disabled must be true or false, got %s", idOf(m), describe(v))
			}
			r.Disabled = b
		default:
			s, ok := scalarString(v)
			if !ok {
				return fmt.Errorf("resource %q: attribute %q must be a string, number or boolean, got %s", idOf(m), k, describe(v))
			}
			if r.Attributes == nil {
				r.Attributes = map[string]string{}
			}
			r.Attributes[k] = s
		}
	}
	if r.ID == "" {
		return fmt.Errorf("resource without an id (every listed resource needs one, e.g. {id: dut1})")
	}
	return nil
}

func idOf(m map[string]any) string {
	s, _ := scalarString(m["id"])
	return s
}

func scalarString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case bool:
		return strconv.FormatBool(x), true
	case int:
		return strconv.Itoa(x), true
	case int64:
		return strconv.FormatInt(x, 10), true
	case uint64:
		return strconv.FormatUint(x, 10), true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case json.Number:
		return x.String(), true
	}
	return "", false
}

func stringMap(what string, v any) (map[string]string, error) {
	if v == nil {
		return nil, nil
	}
	out := map[string]string{}
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			s, ok := scalarString(e)
			if !ok {
				return nil, fmt.Errorf("%s.%s must be a string, got %s", what, k, describe(e))
			}
			out[k] = s
		}
	case map[any]any:
		for k, e := range x {
			ks, ok := scalarString(k)
			s, ok2 := scalarString(e)
			if !ok || !ok2 {
				return nil, fmt.Errorf("%s must map strings to strings", what)
			}
			out[ks] = s
		}
	default:
		return nil, fmt.Errorf("%s must be a mapping, got %s", what, describe(v))
	}
	return out, nil
}

func describe(v any) string {
	switch v.(type) {
	case nil:
		return "nothing"
	case map[string]any, map[any]any:
		return "a mapping"
	case []any:
		return "a list"
	}
	return fmt.Sprintf("%v", v)
}

// Validate checks the configuration and returns an error naming every
// problem found: bad pool names, unknown orders, bad ranges, duplicate or
// malformed resource ids, and keepalive or fill bounds out of range.
func (c *Config) Validate() error {
	var problems []string
	if c.Keepalive != 0 && c.Keepalive < MinKeepalive {
		problems = append(problems, fmt.Sprintf("keepalive %s is below the minimum of %s", c.Keepalive, MinKeepalive))
	}
	if c.FillMaxPasses < 0 {
		problems = append(problems, fmt.Sprintf("fill_max_passes %d is negative", c.FillMaxPasses))
	}
	if c.Grace < 0 || c.MaxGrace < 0 {
		problems = append(problems, fmt.Sprintf("grace %s and max_grace %s must not be negative", c.Grace, c.MaxGrace))
	}
	if c.PoolPrecedence != "" && c.PoolPrecedence != PrecedenceStore && c.PoolPrecedence != PrecedenceConfig {
		problems = append(problems, fmt.Sprintf("pool_precedence %q: want %q or %q", c.PoolPrecedence, PrecedenceStore, PrecedenceConfig))
	}
	maxGrace := c.MaxGrace
	if maxGrace == 0 {
		maxGrace = DefaultMaxGrace
	}
	if c.Grace > maxGrace {
		problems = append(problems, fmt.Sprintf("grace %s is more than max_grace %s", c.Grace, maxGrace))
	}
	if c.FillMaxWait < 0 {
		problems = append(problems, fmt.Sprintf("fill_max_wait %s is negative", c.FillMaxWait))
	}
	for _, name := range sortedKeys(c.Pools) {
		pc := c.Pools[name]
		if _, err := pc.Pool(name); err != nil {
			problems = append(problems, forge.ErrorMessage(err))
		}
	}
	if len(problems) > 0 {
		return forge.Errorf(forge.EINVALID, "lease configuration: %s", strings.Join(problems, "; "))
	}
	return nil
}

// BuildPools returns the pools of the configuration, sorted by name. It
// validates each pool as Validate does.
func (c *Config) BuildPools() ([]*forge.Pool, error) {
	var pools []*forge.Pool
	for _, name := range sortedKeys(c.Pools) {
		pc := c.Pools[name]
		p, err := pc.Pool(name)
		if err != nil {
			return nil, err
		}
		pools = append(pools, p)
	}
	return pools, nil
}

// ManagerOptions returns the Memory options the configuration asks for.
func (c *Config) ManagerOptions() MemoryOptions {
	return MemoryOptions{FillMaxPasses: c.FillMaxPasses, FillMaxWait: c.FillMaxWait, Grace: c.Grace, MaxGrace: c.MaxGrace}
}

// KeepaliveOrDefault returns Keepalive, or DefaultKeepalive when unset.
func (c *Config) KeepaliveOrDefault() time.Duration {
	if c.Keepalive == 0 {
		return DefaultKeepalive
	}
	return c.Keepalive
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// DecodePool reads the pool called name from r, in the JSON form of its
// declaration (the REST API's PUT body): unknown fields are refused. The
// error (EINVALID) names the problem; r's own errors are wrapped.
func DecodePool(name string, r io.Reader) (*forge.Pool, error) {
	var pc PoolConfig
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&pc); err != nil {
		return nil, forge.Errorf(forge.EINVALID, "pool %q: body is not a pool object like {\"order\":\"fifo\",\"resources\":[{\"id\":\"dut1\"}]}: %w", name, err)
	}
	if dec.More() {
		return nil, forge.Errorf(forge.EINVALID, "pool %q: body holds more than one JSON value", name)
	}
	return pc.Pool(name)
}

// Pool builds the pool called name from its declaration: the range's
// resources first, then the listed ones, each with the pool's labels
// merged under its own. The error (EINVALID) names the problem.
func (pc *PoolConfig) Pool(name string) (*forge.Pool, error) {
	if err := checkPoolName(name); err != nil {
		return nil, err
	}
	p := &forge.Pool{Name: name, Order: pc.Order}
	check, err := pc.Check.poolCheck(name)
	if err != nil {
		return nil, err
	}
	p.Check = check
	if p.Order == "" {
		p.Order = OrderFIFO
	}
	if p.Order != OrderFIFO && p.Order != OrderFill {
		return nil, forge.Errorf(forge.EINVALID, "pool %q: unknown order %q (want %q or %q)", name, pc.Order, OrderFIFO, OrderFill)
	}
	if err := checkLabels(pc.Labels); err != nil {
		return nil, forge.Errorf(forge.EINVALID, "pool %q: labels: %s", name, forge.ErrorMessage(err))
	}
	if pc.MaxGrace != "" {
		d, err := time.ParseDuration(pc.MaxGrace)
		if err != nil || d <= 0 {
			return nil, forge.Errorf(forge.EINVALID, "pool %q: max_grace %q: want a positive duration such as 30s or 2m", name, pc.MaxGrace)
		}
		p.MaxGrace = d
	}
	withLabels := func(own map[string]string) map[string]string {
		if len(pc.Labels) == 0 {
			return own
		}
		m := make(map[string]string, len(pc.Labels)+len(own))
		for k, v := range pc.Labels {
			m[k] = v
		}
		for k, v := range own {
			m[k] = v
		}
		return m
	}
	if pc.Range != "" {
		lo, hi, err := parseRange(pc.Range)
		if err != nil {
			return nil, forge.Errorf(forge.EINVALID, "pool %q: %s", name, err.Error())
		}
		for i := lo; i <= hi; i++ {
			// The id is the value (a port number, say); no attributes, so
			// a range of thousands stays small.
			p.Resources = append(p.Resources, &forge.Resource{
				ID: strconv.FormatInt(i, 10), Labels: withLabels(nil),
			})
		}
	}
	for i, rc := range pc.Resources {
		if rc.ID == "" {
			return nil, forge.Errorf(forge.EINVALID, "pool %q: resource %d has no id", name, i+1)
		}
		p.Resources = append(p.Resources, &forge.Resource{
			ID: rc.ID, Attributes: rc.Attributes, Labels: withLabels(rc.Labels), Disabled: rc.Disabled,
		})
	}
	if err := checkPool(p); err != nil {
		return nil, err
	}
	return p, nil
}

// parseRange reads "LOW-HIGH" with LOW ≤ HIGH, both non-negative integers.
func parseRange(s string) (lo, hi int64, err error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return 0, 0, fmt.Errorf("range %q: want LOW-HIGH, e.g. 20000-20999", s)
	}
	lo, err1 := strconv.ParseInt(strings.TrimSpace(a), 10, 64)
	hi, err2 := strconv.ParseInt(strings.TrimSpace(b), 10, 64)
	switch {
	case err1 != nil || err2 != nil || lo < 0:
		return 0, 0, fmt.Errorf("range %q: want LOW-HIGH with non-negative integers, e.g. 20000-20999", s)
	case lo > hi:
		return 0, 0, fmt.Errorf("range %q: low end %d is above high end %d", s, lo, hi)
	case hi-lo+1 > maxRangeSize:
		return 0, 0, fmt.Errorf("range %q: %d resources, more than the limit of %d", s, hi-lo+1, maxRangeSize)
	}
	return lo, hi, nil
}

func checkPoolName(name string) error {
	if name == "" {
		return forge.Errorf(forge.EINVALID, "a pool needs a name")
	}
	if len(name) > maxPoolName {
		return forge.Errorf(forge.EINVALID, "pool name %q is longer than %d characters", name, maxPoolName)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return forge.Errorf(forge.EINVALID, "pool name %q: only letters, digits, '-', '_' and '.' are allowed", name)
		}
	}
	return nil
}

func checkResourceID(id string) error {
	if id == "" {
		return fmt.Errorf("empty resource id")
	}
	if len(id) > maxResourceID {
		return fmt.Errorf("resource id %q is longer than %d characters", id, maxResourceID)
	}
	if id == "." || id == ".." {
		return fmt.Errorf("resource id %q is not allowed", id)
	}
	for _, c := range id {
		if c <= ' ' || c == 0x7f || c == '/' || c == '?' || c == '#' || c == '%' {
			return fmt.Errorf("resource id %q: spaces, control characters, '/', '?', '#' and '%%' are not allowed", id)
		}
	}
	return nil
}

func checkLabels(l map[string]string) error {
	for k, v := range l {
		if k == "" {
			return forge.Errorf(forge.EINVALID, "empty label name")
		}
		if len(k) > maxLabelLength || len(v) > maxLabelLength {
			return forge.Errorf(forge.EINVALID, "label %q is longer than %d characters", k, maxLabelLength)
		}
	}
	return nil
}

// checkPool validates a built pool: name, order, ids unique and well
// formed, labels sane. An empty order becomes fifo, the documented default,
// so pools built in Go or sent to the REST API without one behave like
// pools from the configuration file.
func checkPool(p *forge.Pool) error {
	if err := checkPoolName(p.Name); err != nil {
		return err
	}
	if err := checkPoolCheck(p.Name, p.Check); err != nil {
		return err
	}
	if p.Check != nil && len(p.Resources) > MaxCheckedResources {
		return forge.Errorf(forge.EINVALID, "pool %q: %d resources, more than the %d a pool with a check may have", p.Name, len(p.Resources), MaxCheckedResources)
	}
	if p.Order == "" {
		p.Order = OrderFIFO
	}
	if p.Order != OrderFIFO && p.Order != OrderFill {
		return forge.Errorf(forge.EINVALID, "pool %q: unknown order %q (want %q or %q)", p.Name, p.Order, OrderFIFO, OrderFill)
	}
	if p.MaxGrace < 0 {
		return forge.Errorf(forge.EINVALID, "pool %q: max_grace %s is negative", p.Name, p.MaxGrace)
	}
	seen := make(map[string]bool, len(p.Resources))
	for _, r := range p.Resources {
		if r == nil {
			return forge.Errorf(forge.EINVALID, "pool %q: null resource", p.Name)
		}
		if err := checkResourceID(r.ID); err != nil {
			return forge.Errorf(forge.EINVALID, "pool %q: %s", p.Name, err.Error())
		}
		if seen[r.ID] {
			return forge.Errorf(forge.EINVALID, "pool %q: duplicate resource id %q", p.Name, r.ID)
		}
		seen[r.ID] = true
		if err := checkLabels(r.Labels); err != nil {
			return forge.Errorf(forge.EINVALID, "pool %q: resource %q: %s", p.Name, r.ID, forge.ErrorMessage(err))
		}
	}
	return nil
}
