package trigger

import (
	"context"
	"time"
)

// claim claims keys for this server and returns those it holds; without
// Options.Claims it holds them all.
func (p *Processor) claim(ctx context.Context, keys []string) ([]string, error) {
	if p.opts.Claims == nil {
		return keys, nil
	}
	now := p.opts.Now()
	held, err := p.opts.Claims.ClaimDeliveries(ctx, p.opts.ID, p.opts.Home, keys, now, now.Add(p.opts.ClaimTTL))
	if err != nil {
		return nil, err
	}
	if len(held) < len(keys) {
		p.log.Debug("trigger: repositories held by other servers", "held", len(held), "wanted", len(keys))
	}
	return held, nil
}

// keepClaims renews the claims on keys every ClaimTTL/3 until the
// returned function is called, which waits for the renewing goroutine to
// end.
func (p *Processor) keepClaims(ctx context.Context, keys []string) (stop func()) {
	if p.opts.Claims == nil || len(keys) == 0 {
		return func() {}
	}
	kctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(p.opts.ClaimTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-kctx.Done():
				return
			case <-t.C:
			}
			n, err := p.opts.Claims.TouchDeliveryClaims(kctx, p.opts.ID, keys, p.opts.Now().Add(p.opts.ClaimTTL))
			switch {
			case err != nil && kctx.Err() == nil:
				p.log.Error("trigger: renewing delivery claims", "err", err)
			case err == nil && n < len(keys):
				// Taken over while this server could not renew them (it
				// hung, or lost the database): the store's uniqueness
				// still keeps each delivery to one build.
				p.log.Warn("trigger: delivery claims taken over by another server", "lost", len(keys)-n)
			}
		}
	}()
	return func() { cancel(); <-done }
}

// release gives up the claims on keys, so another server need not wait for
// them to expire.
func (p *Processor) release(ctx context.Context, keys []string) {
	if p.opts.Claims == nil || len(keys) == 0 {
		return
	}
	// Released even when ctx ended (a shutdown), within a bound.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := p.opts.Claims.ReleaseDeliveryClaims(rctx, p.opts.ID, keys); err != nil {
		p.log.Warn("trigger: releasing delivery claims", "err", err)
	}
}
