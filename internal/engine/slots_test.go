package engine

import (
	"context"
	"testing"
	"time"

	"github.com/forgeci/forge/internal/testwait"
)

func TestSlotsOrder(t *testing.T) {
	s := newSlots(1)
	ctx := context.Background()
	if err := s.acquire(ctx, false); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 3)
	queued := 0
	wait := func(name string, urgent bool) {
		go func() {
			if err := s.acquire(ctx, urgent); err == nil {
				order <- name
			}
		}()
		queued++
		// let it queue before the next one
		testwait.For(t, name+" to queue", func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return len(s.waiters[0])+len(s.waiters[1]) == queued
		})
	}
	wait("normal1", false)
	wait("normal2", false)
	wait("urgent", true)

	var got []string
	for range 3 {
		s.release()
		select {
		case n := <-order:
			got = append(got, n)
		case <-time.After(2 * time.Second):
			t.Fatalf("no waiter got the slot; so far %v", got)
		}
	}
	want := []string{"urgent", "normal1", "normal2"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("order: got %v, want %v", got, want)
		}
	}
}

func TestSlotsCancelWhileWaiting(t *testing.T) {
	s := newSlots(1)
	if err := s.acquire(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.acquire(ctx, false); err == nil {
		t.Fatal("acquire with a full pool and an ended context: got nil, want an error")
	}
	s.release()
	// The cancelled waiter must not have kept a place: the slot is free.
	done := make(chan error, 1)
	go func() { done <- s.acquire(context.Background(), false) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Second):
		t.Fatal("the slot was lost to a cancelled waiter")
	}
}
