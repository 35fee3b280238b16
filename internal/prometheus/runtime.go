package prometheus

import (
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// goCollector reports the Go runtime's state under the go_* names
// Prometheus users know from client_golang.
type goCollector struct {
	goroutines, threads, info, gcDuration, gogc, maxProcs *Desc
	mem                                                   []memStat
}

// memStat is one go_memstats_* metric.
type memStat struct {
	desc *Desc
	typ  ValueType
	get  func(*runtime.MemStats) float64
}

// NewGoCollector returns a collector of the process's Go runtime metrics:
// goroutines, threads, garbage collection and memory statistics.
func NewGoCollector() Collector {
	c := &goCollector{
		goroutines: NewDesc("go_goroutines", "Number of goroutines that currently exist.", nil, nil),
		threads:    NewDesc("go_threads", "Number of OS threads created.", nil, nil),
		info:       NewDesc("go_info", "Information about the Go environment.", nil, Labels{"version": runtime.Version()}),
		gcDuration: NewDesc("go_gc_duration_seconds", "A summary of the pause duration of garbage collection cycles.", nil, nil),
		gogc:       NewDesc("go_gc_gogc_percent", "Heap size target percentage configured by the user (GOGC), otherwise 100.", nil, nil),
		maxProcs:   NewDesc("go_sched_gomaxprocs_threads", "The current runtime.GOMAXPROCS setting.", nil, nil),
	}
	stat := func(name, help string, typ ValueType, get func(*runtime.MemStats) float64) {
		c.mem = append(c.mem, memStat{NewDesc("go_memstats_"+name, help, nil, nil), typ, get})
	}
	stat("alloc_bytes", "Number of heap bytes allocated and still in use.", GaugeValue, func(m *runtime.MemStats) float64 { return float64(m.Alloc) })
	stat("alloc_bytes_total", "Total number of heap bytes allocated, even if freed.", CounterValue, func(m *runtime.MemStats) float64 { return float64(m.TotalAlloc) })
	stat("sys_bytes", "Number of bytes obtained from the system.", GaugeValue, func(m *runtime.MemStats) float64 { return float64(m.Sys) })
	stat("mallocs_total", "Total number of heap objects allocated.", CounterValue, func(m *runtime.MemStats) float64 { return float64(m.Mallocs) })
	stat("frees_total", "Total number of heap objects frees.", CounterValue, func(m *runtime.MemStats) float64 { return float64(m.Frees) })
	stat("heap_alloc_bytes", "Number of heap bytes allocated and still in use.", GaugeValue, func(m *runtime.MemStats) float64 { return float64(m.HeapAlloc) })
	stat("heap_sys_bytes", "Number of heap bytes obtained from the system.", GaugeValue, func(m *runtime.MemStats) float64 { return float64(m.HeapSys) })
	stat("heap_idle_bytes", "Number of heap bytes waiting to be used.", GaugeValue, func(m *runtime.MemStats) float64 { return float64(m.HeapIdle) })
	stat("heap_inuse_bytes", "Number of heap bytes that are in use.", GaugeValue, func(m *runtime.MemStats) float64 { return float64(m.HeapInuse) })
	stat("heap_released_bytes", "Number of heap bytes released to the OS.", GaugeValue, func(m *runtime.MemStats) float64 { return float64(m.HeapReleased) })
	stat("heap_objects", "Number of currently allocated objects.", GaugeValue, func(m *runtime.MemStats) float64 { return float64(m.HeapObjects) })
	stat("stack_inuse_bytes", "Number of bytes in use by the stack allocator.", GaugeValue, func(m *runtime.MemStats) float64 { return float64(m.StackInuse) })
	stat("stack_sys_bytes", "Number of bytes obtained from the system for the stack allocator.", GaugeValue, func(m *runtime.MemStats) float64 { return float64(m.StackSys) })
	stat("next_gc_bytes", "Number of heap bytes when the next garbage collection will take place.", GaugeValue, func(m *runtime.MemStats) float64 { return float64(m.NextGC) })
	stat("last_gc_time_seconds", "Number of seconds since 1970 of the last garbage collection.", GaugeValue, func(m *runtime.MemStats) float64 { return float64(m.LastGC) / 1e9 })
	return c
}

func (c *goCollector) Describe(ch chan<- *Desc) {
	for _, d := range []*Desc{c.goroutines, c.threads, c.info, c.gcDuration, c.gogc, c.maxProcs} {
		ch <- d
	}
	for _, m := range c.mem {
		ch <- m.desc
	}
}

func (c *goCollector) Collect(ch chan<- Metric) {
	ch <- MustNewConstMetric(c.goroutines, GaugeValue, float64(runtime.NumGoroutine()))
	threads, _ := runtime.ThreadCreateProfile(nil)
	ch <- MustNewConstMetric(c.threads, GaugeValue, float64(threads))
	ch <- MustNewConstMetric(c.info, GaugeValue, 1)
	ch <- MustNewConstMetric(c.maxProcs, GaugeValue, float64(runtime.GOMAXPROCS(0)))
	gogc := 100.0
	if v, err := strconv.Atoi(os.Getenv("GOGC")); err == nil {
		gogc = float64(v)
	}
	ch <- MustNewConstMetric(c.gogc, GaugeValue, gogc)

	var gc debug.GCStats
	gc.PauseQuantiles = make([]time.Duration, 5)
	debug.ReadGCStats(&gc)
	quantiles := map[float64]float64{}
	for i, q := range []float64{0, 0.25, 0.5, 0.75, 1} {
		quantiles[q] = gc.PauseQuantiles[i].Seconds()
	}
	if m, err := NewConstSummary(c.gcDuration, uint64(gc.NumGC), gc.PauseTotal.Seconds(), quantiles); err == nil {
		ch <- m
	}

	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	for _, m := range c.mem {
		ch <- MustNewConstMetric(m.desc, m.typ, m.get(&ms))
	}
}

// processCollector reports the process's CPU, memory and file
// descriptors under the process_* names of client_golang. What the
// system does not tell (no /proc) is left out.
type processCollector struct {
	cpu, openFDs, maxFDs, vsize, rss, start *Desc
}

// NewProcessCollector returns a collector of this process's CPU time,
// memory, open file descriptors and start time.
func NewProcessCollector() Collector {
	return &processCollector{
		cpu:     NewDesc("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", nil, nil),
		openFDs: NewDesc("process_open_fds", "Number of open file descriptors.", nil, nil),
		maxFDs:  NewDesc("process_max_fds", "Maximum number of open file descriptors.", nil, nil),
		vsize:   NewDesc("process_virtual_memory_bytes", "Virtual memory size in bytes.", nil, nil),
		rss:     NewDesc("process_resident_memory_bytes", "Resident memory size in bytes.", nil, nil),
		start:   NewDesc("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", nil, nil),
	}
}

func (c *processCollector) Describe(ch chan<- *Desc) {
	for _, d := range []*Desc{c.cpu, c.openFDs, c.maxFDs, c.vsize, c.rss, c.start} {
		ch <- d
	}
}

func (c *processCollector) Collect(ch chan<- Metric) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		ch <- MustNewConstMetric(c.cpu, CounterValue, cpu.Seconds())
	}
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		ch <- MustNewConstMetric(c.maxFDs, GaugeValue, float64(lim.Cur))
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		ch <- MustNewConstMetric(c.openFDs, GaugeValue, float64(len(fds)-1)) // less the one reading the directory
	}
	if st, err := readProcStat(); err == nil {
		ch <- MustNewConstMetric(c.vsize, GaugeValue, st.vsize)
		ch <- MustNewConstMetric(c.rss, GaugeValue, st.rss)
		if st.start > 0 {
			ch <- MustNewConstMetric(c.start, GaugeValue, st.start)
		}
	}
}

// procStat is what /proc/self/stat and /proc/stat say of this process.
type procStat struct {
	vsize, rss, start float64
}

// userHZ is the unit of the clock ticks of /proc/self/stat (USER_HZ, 100
// on every Linux architecture Go supports).
const userHZ = 100

func readProcStat() (procStat, error) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return procStat{}, err
	}
	// The command name in parentheses may hold spaces: fields count from
	// after its closing parenthesis, the state being field 3.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 22 {
		return procStat{}, os.ErrInvalid
	}
	field := func(n int) float64 { // n: the field's number in proc(5)
		v, _ := strconv.ParseFloat(fields[n-3], 64)
		return v
	}
	st := procStat{vsize: field(23), rss: field(24) * float64(os.Getpagesize())}
	if stat, err := os.ReadFile("/proc/stat"); err == nil {
		for _, line := range strings.Split(string(stat), "\n") {
			if v, ok := strings.CutPrefix(line, "btime "); ok {
				if boot, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
					st.start = boot + field(22)/userHZ
				}
				break
			}
		}
	}
	return st, nil
}
