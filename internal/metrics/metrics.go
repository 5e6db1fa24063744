// Package metrics is what `portfw watch --metrics-address` serves: the
// Prometheus metrics of the daemon and the kernel's drop counters at
// /metrics, and a health check at /healthz. `portfw status --format
// prometheus` writes the same counters for node_exporter's textfile
// collector.
package metrics

import (
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"

	"github.com/portfw/portfw/compiler"
)

// State is what the daemon last did, as it reports it after every reload
// and check.
type State struct {
	Policy       string
	Enforced     bool // a valid policy is in the kernel
	Reservations int
	Table        string
	Gen          uint32 // the ruleset generation of its last commit or check
	GuardOn      bool
	// Failure is the daemon's current failure ("" when none): a policy
	// it could not enforce, or enforced only in part.
	Failure   string
	AppliedAt time.Time
	// Rejected is why the policy files on disk were rejected at the last
	// reload ("" when they were valid); the last good policy stays.
	Rejected string
}

// Source is what the metrics read from the host, at scrape time.
type Source struct {
	// Gen is the ruleset's current generation.
	Gen func() (uint32, error)
	// Drops reads the drop counters of the table.
	Drops func(table string) ([]compiler.Summary, error)
	// LockHeld says whether the daemon still holds its namespace's lock.
	LockHeld func() error
	// ScrapeError hears, once per read, that the drop counters could not
	// be read; scrapes then serve the other metrics. May be nil.
	ScrapeError func(error)
}

// Metrics are the daemon's metrics and health.
type Metrics struct {
	reg    *prometheus.Registry
	src    Source
	reload struct {
		total   *prometheus.CounterVec
		seconds prometheus.Histogram
	}
	repairs      prometheus.Counter
	reservations prometheus.Gauge
	squatters    *prometheus.GaugeVec
	appliedAt    prometheus.Gauge
	guardActive  prometheus.Gauge

	mu    sync.Mutex // guards state
	state State

	dropsMu sync.Mutex // guards drops; held across a read, never with mu
	drops   dropCache
}

// DropsMaxAge bounds how old the drop counters a scrape sees may be: at
// 10k reservations reading them takes tens of milliseconds, which a scrape
// every few seconds should not pay each time.
const DropsMaxAge = 10 * time.Second

// New makes the metrics, registered with their own registry.
func New(version string, src Source) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), src: src}
	m.reload.total = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "portfw_reloads_total",
		Help: "Reloads of the policy, by result: applied (changed the kernel), unchanged, invalid (the policy was rejected), failed (it could not be enforced)."},
		[]string{"result"})
	m.reload.seconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "portfw_reload_duration_seconds",
		Help:    "Time from the first file event of an edit to the kernel's commit of the change.",
		Buckets: []float64{.005, .01, .02, .03, .05, .075, .1, .2, .5, 1, 2, 5}})
	m.repairs = prometheus.NewCounter(prometheus.CounterOpts{Name: "portfw_drift_repairs_total",
		Help: "Times the daemon restored its table, guard or sysctls after someone else changed them."})
	m.reservations = prometheus.NewGauge(prometheus.GaugeOpts{Name: "portfw_reservations", Help: "Reservations in the policy in force."})
	m.squatters = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "portfw_squatters",
		Help: "Sockets of non-owners on reserved ports, by reservation, at the last periodic audit."}, []string{"reservation"})
	m.appliedAt = prometheus.NewGauge(prometheus.GaugeOpts{Name: "portfw_policy_applied_timestamp_seconds",
		Help: "When the policy in force was last applied (Unix time)."})
	m.guardActive = prometheus.NewGauge(prometheus.GaugeOpts{Name: "portfw_bind_guard_active",
		Help: "1 when the bind guard enforces the policy in this namespace."})
	filesValid := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "portfw_policy_files_valid",
		Help: "1 when the policy files on disk were valid at the last reload; 0 while they are rejected and the last good policy stays enforced."},
		func() float64 {
			m.mu.Lock()
			defer m.mu.Unlock()
			return map[bool]float64{true: 1}[m.state.Rejected == ""]
		})
	inSync := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "portfw_in_sync",
		Help: "1 when a valid policy is enforced and nobody changed the ruleset since the daemon's last commit or check."},
		func() float64 {
			if ok, _ := m.healthy(); ok {
				return 1
			}
			return 0
		})
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "portfw_build_info",
		Help: "portfw's version and Go version, as labels; the value is 1."}, []string{"version", "goversion"})
	build.WithLabelValues(version, runtime.Version()).Set(1)
	m.reg.MustRegister(m.reload.total, m.reload.seconds, m.repairs, m.reservations, m.squatters, m.appliedAt, m.guardActive,
		inSync, filesValid, build, dropCollector{m})
	for _, r := range []string{"applied", "unchanged", "invalid", "failed"} {
		m.reload.total.WithLabelValues(r)
	}
	return m
}

// Reloaded counts a reload; took is from the edit to the commit, or zero
// when there was no commit to time.
func (m *Metrics) Reloaded(result string, took time.Duration) {
	m.reload.total.WithLabelValues(result).Inc()
	if took > 0 {
		m.reload.seconds.Observe(took.Seconds())
	}
}

// Repaired counts a drift repair.
func (m *Metrics) Repaired() { m.repairs.Inc() }

// Audited sets the squatter counts of the last audit (reservations with
// none are reported as 0 while they were seen before).
func (m *Metrics) Audited(byReservation map[string]int) {
	m.squatters.Reset()
	for r, n := range byReservation {
		m.squatters.WithLabelValues(r).Set(float64(n))
	}
}

// Set records the daemon's state.
func (m *Metrics) Set(s State) {
	m.mu.Lock()
	m.state = s
	m.mu.Unlock()
	m.reservations.Set(float64(s.Reservations))
	if !s.AppliedAt.IsZero() {
		m.appliedAt.Set(float64(s.AppliedAt.UnixNano()) / 1e9)
	}
	m.guardActive.Set(map[bool]float64{true: 1}[s.GuardOn && s.Enforced])
}

// healthy says whether the policy is enforced now, and why not.
func (m *Metrics) healthy() (bool, string) {
	m.mu.Lock()
	s := m.state
	m.mu.Unlock()
	switch {
	case !s.Enforced && s.Failure == "":
		return false, "no valid policy enforced yet"
	case !s.Enforced:
		return false, "the policy is not enforced: " + s.Failure
	case s.Failure != "":
		return false, s.Failure
	}
	if m.src.LockHeld != nil {
		if err := m.src.LockHeld(); err != nil {
			return false, "the daemon lost its namespace's lock: " + err.Error()
		}
	}
	if m.src.Gen != nil {
		gen, err := m.src.Gen()
		if err != nil {
			return false, "cannot read the ruleset's generation: " + err.Error()
		}
		if gen != s.Gen {
			return false, fmt.Sprintf("the ruleset changed since the daemon's last commit or check (generation %d, the daemon's %d): "+
				"its table is being checked and repaired", gen, s.Gen)
		}
	}
	ok := fmt.Sprintf("ok: %s enforced, %d reservations in table inet %s", s.Policy, s.Reservations, s.Table)
	if s.Rejected != "" {
		ok += "; the files on disk are rejected, the last good policy stays: " + s.Rejected
	}
	return true, ok
}

// Handler serves /metrics and /healthz.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	// A scrape of 10k reservations costs milliseconds; a few at once is
	// all a Prometheus needs, and more are refused (503) rather than
	// queued.
	opts := promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, MaxRequestsInFlight: 2, Timeout: 10 * time.Second}
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, opts))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := m.healthy()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, why)
	})
	return mux
}

// dropCache keeps the last read of the drop counters.
type dropCache struct {
	at    time.Time
	table string
	sums  []compiler.Summary
	err   error
}

// dropCounters reads the counters at most every DropsMaxAge (or when the
// table changed), one read at a time; scrapes in between get the last read.
// The daemon's state lock is not held meanwhile, so a slow read never
// holds up the daemon.
func (m *Metrics) dropCounters() ([]compiler.Summary, error) {
	m.mu.Lock()
	table := m.state.Table
	m.mu.Unlock()
	if m.src.Drops == nil || table == "" {
		return nil, nil
	}
	m.dropsMu.Lock()
	defer m.dropsMu.Unlock()
	if m.drops.table == table && time.Since(m.drops.at) < DropsMaxAge {
		return m.drops.sums, m.drops.err
	}
	sums, err := m.src.Drops(table)
	m.drops = dropCache{at: time.Now(), table: table, sums: sums, err: err}
	if err != nil && m.src.ScrapeError != nil {
		m.src.ScrapeError(err)
	}
	return sums, err
}

var (
	dropPackets = prometheus.NewDesc("portfw_dropped_packets_total",
		"Packets dropped on reserved ports because a non-owner's socket sent or would have received them, by reservation and direction (in: to the squatter's port; out: from it).",
		[]string{"reservation", "direction"}, nil)
	dropBytes = prometheus.NewDesc("portfw_dropped_bytes_total",
		"Bytes of portfw_dropped_packets_total.", []string{"reservation", "direction"}, nil)
)

// dropCollector reports the kernel's per-element drop counters.
type dropCollector struct{ m *Metrics }

func (c dropCollector) Describe(ch chan<- *prometheus.Desc) { ch <- dropPackets; ch <- dropBytes }

// Collect reports what the last read found; a failed read was told to
// ScrapeError, and its counters are left out.
func (c dropCollector) Collect(ch chan<- prometheus.Metric) {
	sums, err := c.m.dropCounters()
	if err == nil {
		collectDrops(ch, sums)
	}
}

// collectDrops reports the counters that moved: a reservation's series
// appear with its first drop. At 10k reservations the zeros would be 40k
// series, megabytes per scrape, saying nothing.
func collectDrops(ch chan<- prometheus.Metric, sums []compiler.Summary) {
	for _, s := range sums {
		for _, d := range []struct {
			dir string
			c   compiler.Counter
		}{{"in", s.DroppedIn}, {"out", s.DroppedOut}} {
			if d.c.Packets == 0 {
				continue
			}
			ch <- prometheus.MustNewConstMetric(dropPackets, prometheus.CounterValue, float64(d.c.Packets), s.Name, d.dir)
			ch <- prometheus.MustNewConstMetric(dropBytes, prometheus.CounterValue, float64(d.c.Bytes), s.Name, d.dir)
		}
	}
}

// Text is what `portfw status --format prometheus` reports.
type Text struct {
	Version     string
	Table       string
	Installed   bool
	Drops       []compiler.Summary // of the table, with the root-only guard
	GuardActive bool
	InSync      *bool // nil: no policy to compare with
}

// WriteText writes t in the Prometheus text format, for node_exporter's
// textfile collector on hosts without the daemon: the same drop counters
// and gauges the daemon serves.
func WriteText(w io.Writer, t Text) error {
	reg := prometheus.NewRegistry()
	gauge := func(name, help string, v bool) {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
		g.Set(map[bool]float64{true: 1}[v])
		reg.MustRegister(g)
	}
	gauge("portfw_table_installed", "1 when portfw's table is in the kernel.", t.Installed)
	gauge("portfw_bind_guard_active", "1 when the bind guard enforces a policy in this namespace.", t.GuardActive)
	if t.InSync != nil {
		gauge("portfw_in_sync", "1 when the table in the kernel is the one the policy compiles to.", *t.InSync)
	}
	n := 0
	for _, s := range t.Drops {
		if s.Name != "" && s.Name[0] != '_' && s.Name != compiler.Unlabelled {
			n++
		}
	}
	reservations := prometheus.NewGauge(prometheus.GaugeOpts{Name: "portfw_reservations", Help: "Reservations in portfw's table."})
	reservations.Set(float64(n))
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "portfw_build_info",
		Help: "portfw's version and Go version, as labels; the value is 1."}, []string{"version", "goversion"})
	build.WithLabelValues(t.Version, runtime.Version()).Set(1)
	sorted := append([]compiler.Summary(nil), t.Drops...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	reg.MustRegister(reservations, build, staticDrops(sorted))
	mfs, err := reg.Gather()
	if err != nil {
		return err
	}
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return err
		}
	}
	return nil
}

type staticDrops []compiler.Summary

func (s staticDrops) Describe(ch chan<- *prometheus.Desc) { ch <- dropPackets; ch <- dropBytes }
func (s staticDrops) Collect(ch chan<- prometheus.Metric) { collectDrops(ch, s) }
