package prometheus

import (
	"bufio"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
)

// ContentType is the media type of the text format.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// WriteText writes families in the text format: for each, a HELP and a
// TYPE line, then one line per series (histograms and summaries as
// their _bucket or quantile, _sum and _count lines).
func WriteText(w io.Writer, families []*MetricFamily) error {
	bw := bufio.NewWriter(w)
	var b []byte
	for _, f := range families {
		b = append(b[:0], "# HELP "...)
		b = append(b, f.Name...)
		b = append(b, ' ')
		b = appendEscaped(b, f.Help, false)
		b = append(b, "\n# TYPE "...)
		b = append(b, f.Name...)
		b = append(b, ' ')
		b = append(b, f.Type.String()...)
		b = append(b, '\n')
		for _, s := range f.Metric {
			switch {
			case s.Histogram != nil:
				h := s.Histogram
				inf := false
				for _, bk := range h.Bucket {
					b = appendSeries(b, f.Name, "_bucket", s.Label, "le", bk.UpperBound)
					b = strconv.AppendUint(b, bk.CumulativeCount, 10)
					b = append(b, '\n')
					inf = inf || math.IsInf(bk.UpperBound, +1)
				}
				if !inf {
					b = appendSeries(b, f.Name, "_bucket", s.Label, "le", math.Inf(+1))
					b = strconv.AppendUint(b, h.SampleCount, 10)
					b = append(b, '\n')
				}
				b = appendSeries(b, f.Name, "_sum", s.Label, "", 0)
				b = appendFloat(b, h.SampleSum)
				b = append(b, '\n')
				b = appendSeries(b, f.Name, "_count", s.Label, "", 0)
				b = strconv.AppendUint(b, h.SampleCount, 10)
			case s.Summary != nil:
				m := s.Summary
				for _, q := range m.Quantile {
					b = appendSeries(b, f.Name, "", s.Label, "quantile", q.Quantile)
					b = appendFloat(b, q.Value)
					b = append(b, '\n')
				}
				b = appendSeries(b, f.Name, "_sum", s.Label, "", 0)
				b = appendFloat(b, m.SampleSum)
				b = append(b, '\n')
				b = appendSeries(b, f.Name, "_count", s.Label, "", 0)
				b = strconv.AppendUint(b, m.SampleCount, 10)
			default:
				v := s.Counter
				if v == nil {
					v = s.Gauge
				}
				if v == nil {
					v = s.Untyped
				}
				b = appendSeries(b, f.Name, "", s.Label, "", 0)
				b = appendFloat(b, v.GetValue())
			}
			b = append(b, '\n')
		}
		if _, err := bw.Write(b); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// appendSeries appends name+suffix, its labels (and extra=extraValue
// when extra is set) in braces, and the space before the value.
func appendSeries(b []byte, name, suffix string, labels []*LabelPair, extra string, extraValue float64) []byte {
	b = append(b, name...)
	b = append(b, suffix...)
	if len(labels) > 0 || extra != "" {
		b = append(b, '{')
		for i, l := range labels {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, l.Name...)
			b = append(b, `="`...)
			b = appendEscaped(b, l.Value, true)
			b = append(b, '"')
		}
		if extra != "" {
			if len(labels) > 0 {
				b = append(b, ',')
			}
			b = append(b, extra...)
			b = append(b, `="`...)
			b = appendFloat(b, extraValue)
			b = append(b, '"')
		}
		b = append(b, '}')
	}
	return append(b, ' ')
}

// appendEscaped escapes \ and newlines, and " in label values.
func appendEscaped(b []byte, s string, quote bool) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, `\\`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '"' && quote:
			b = append(b, `\"`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

// appendFloat writes v as the text format does: shortest decimal, +Inf,
// -Inf, NaN.
func appendFloat(b []byte, v float64) []byte {
	switch {
	case math.IsNaN(v):
		return append(b, "NaN"...)
	case math.IsInf(v, +1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}

// Handler serves what g gathers in the text format. A gathering error
// answers 500 with the error, so that a broken metric is noticed rather
// than silently missing.
func Handler(g Gatherer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		families, err := g.Gather()
		if err != nil {
			http.Error(w, "An error has occurred while serving metrics:\n\n"+strings.TrimSpace(err.Error()), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", ContentType)
		WriteText(w, families)
	})
}
