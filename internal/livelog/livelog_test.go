package livelog

import (
	"testing"
	"time"

	"github.com/forgeci/forge"
)

func lines(from, n int) []forge.LogLine {
	out := make([]forge.LogLine, n)
	for i := range out {
		out[i] = forge.LogLine{Number: from + i, Text: "x", Stream: forge.Stdout, Time: time.Now()}
	}
	return out
}

func TestPublishReachesSubscribersOfThatJobOnly(t *testing.T) {
	h := New()
	a := h.Subscribe(1, 10)
	b := h.Subscribe(2, 10)
	h.Publish(1, lines(1, 3))
	h.Finish(1)
	var got []int
	for l := range a.C() {
		got = append(got, l.Number)
	}
	if len(got) != 3 || got[0] != 1 || got[2] != 3 {
		t.Errorf("job 1 subscriber got %v, want [1 2 3]", got)
	}
	select {
	case l := <-b.C():
		t.Errorf("job 2 subscriber got line %d of job 1", l.Number)
	default:
	}
	if a.Dropped() {
		t.Error("a finished subscriber reports Dropped")
	}
	b.Close()
	b.Close() // idempotent
	if n := h.Subscribers(2); n != 0 {
		t.Errorf("Subscribers(2) after Close = %d, want 0", n)
	}
}

func TestSlowSubscriberIsDroppedWithoutBlocking(t *testing.T) {
	h := New()
	slow := h.Subscribe(7, 2)
	fast := h.Subscribe(7, 1000)
	done := make(chan struct{})
	go func() {
		for i := 0; i < 100; i++ {
			h.Publish(7, lines(i*5+1, 5))
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Publish blocked on a subscriber that does not read")
	}
	if !slow.Dropped() {
		t.Error("slow subscriber not dropped")
	}
	n := 0
	for range slow.C() {
		n++
	}
	if n != 2 {
		t.Errorf("slow subscriber drained %d lines, want its buffer of 2", n)
	}
	if fast.Dropped() {
		t.Error("fast subscriber with room was dropped")
	}
	if got := len(fast.C()); got != 500 {
		t.Errorf("fast subscriber has %d lines, want 500", got)
	}
	if got := h.Subscribers(7); got != 1 {
		t.Errorf("Subscribers = %d, want 1", got)
	}
}
