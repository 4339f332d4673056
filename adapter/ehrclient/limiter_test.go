package ehrclient

import (
	"net/http"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/endpoint"
)

func TestLimiterHalvesAndRecovers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := NewLimiter(endpoint.RateLimit{PerSecond: 10, Burst: 5}, nil)
		rate := func() float64 { return l.Budget().PerSecond }
		tick := func() { <-time.After(limiterCooldown) } // virtual time

		l.On429()
		l.On429() // the same burst of 429s: counted once
		got := []float64{rate()}
		for range 5 {
			tick()
			l.On429()
			got = append(got, rate())
		}
		// 10 -> 5 -> 2.5 -> 1.25 -> floor 1 (a tenth of 10).
		if diff := cmp.Diff([]float64{5, 2.5, 1.25, 1, 1, 1}, got); diff != "" {
			t.Errorf("rates after 429s (-want +got):\n%s", diff)
		}

		got = nil
		for range 20 {
			l.OnSuccess()
			got = append(got, rate())
		}
		// Additive: +0.5/s per success, capped at the configured 10/s.
		want := []float64{1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 5.5, 6, 6.5, 7, 7.5, 8, 8.5, 9, 9.5, 10, 10, 10}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("rates after successes (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(Budget{PerSecond: 10, Burst: 5, ConfiguredPerSecond: 10}, l.Budget()); diff != "" {
			t.Errorf("Budget (-want +got):\n%s", diff)
		}
	})
}

func TestLimiterPaces(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := NewLimiter(endpoint.RateLimit{PerSecond: 2, Burst: 1}, nil)
		start := time.Now()
		for range 5 {
			if err := l.Wait(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		// One from the burst, then one every 500ms.
		if got := time.Since(start); got != 2*time.Second {
			t.Errorf("5 requests at 2/s took %v, want 2s", got)
		}
		l.On429() // 1/s
		start = time.Now()
		for range 3 {
			if err := l.Wait(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		if got := time.Since(start); got < 2*time.Second {
			t.Errorf("3 requests at 1/s took %v, want at least 2s", got)
		}
	})
}

func TestClientSlowsDownOn429(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var hits counter
		ep := testEndpoint()
		ep.RateLimit = endpoint.RateLimit{PerSecond: 8, Burst: 8}
		c, _ := newTestClient(t, ep, handlerTransport(failFirst(1, http.StatusTooManyRequests, &hits)))
		resp, err := c.Read(t.Context(), "Goal", "g1")
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		if resp.Status != 200 {
			t.Fatalf("status %d", resp.Status)
		}
		// Halved by the 429, then one step (+0.4/s) back by the success.
		if diff := cmp.Diff(Budget{PerSecond: 4.4, Burst: 8, ConfiguredPerSecond: 8}, c.Budget()); diff != "" {
			t.Errorf("Budget (-want +got):\n%s", diff)
		}
	})
}
