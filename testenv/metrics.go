package testenv

import (
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is a scrape, parsed by Prometheus's own text parser.
type Metrics map[string]*dto.MetricFamily

// ParseMetrics parses text in the Prometheus text format; a text that does
// not parse fails the test.
func ParseMetrics(t testing.TB, text string) Metrics {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("does not parse as the Prometheus text format: %v\n%s", err, text)
	}
	return mfs
}

// Value is the value of name's sample with exactly these label pairs
// (name, value, name, value...), in any order; a histogram's is its sample
// count. ok is false when there is no such sample.
func (m Metrics) Value(name string, labels ...string) (v float64, ok bool) {
	mf := m[name]
	if mf == nil {
		return 0, false
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
next:
	for _, s := range mf.Metric {
		if len(s.Label) != len(want) {
			continue
		}
		for _, l := range s.Label {
			if v, ok := want[l.GetName()]; !ok || v != l.GetValue() {
				continue next
			}
		}
		switch {
		case s.Counter != nil:
			return s.Counter.GetValue(), true
		case s.Gauge != nil:
			return s.Gauge.GetValue(), true
		case s.Histogram != nil:
			return float64(s.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}
