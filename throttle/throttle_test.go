package throttle

import (
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// clock is an injected clock the test moves by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type result struct {
	OK         bool
	RetryAfter time.Duration
}

func allow(l *Limiter, id string) result {
	ok, ra := l.Allow(id)
	return result{ok, ra}
}

func TestAllowBurstThenRate(t *testing.T) {
	clk := newClock()
	l := New(2, 3, clk.now) // 2 a second, 3 at once
	var got []result
	for range 4 {
		got = append(got, allow(l, "a"))
	}
	clk.advance(200 * time.Millisecond)
	got = append(got, allow(l, "a")) // 0.4 token: 300ms to go
	clk.advance(300 * time.Millisecond)
	got = append(got, allow(l, "a"), allow(l, "a"))
	clk.advance(10 * time.Second) // refills to the burst, no further
	for range 4 {
		got = append(got, allow(l, "a"))
	}
	want := []result{
		{true, 0}, {true, 0}, {true, 0}, {false, 500 * time.Millisecond},
		{false, 300 * time.Millisecond},
		{true, 0}, {false, 500 * time.Millisecond},
		{true, 0}, {true, 0}, {true, 0}, {false, 500 * time.Millisecond},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Allow results (-want +got):\n%s", diff)
	}
}

func TestDeniedRequestsDoNotConsume(t *testing.T) {
	clk := newClock()
	l := New(1, 1, clk.now)
	allow(l, "a")
	for range 100 {
		if r := allow(l, "a"); r.OK {
			t.Fatal("allowed past the burst")
		}
	}
	clk.advance(time.Second)
	if r := allow(l, "a"); !r.OK {
		t.Errorf("after 1s at 1/s: %+v, want allowed (denials must not push the refill back)", r)
	}
}

func TestClientsAreIndependent(t *testing.T) {
	clk := newClock()
	l := New(1, 1, clk.now)
	got := []result{allow(l, "a"), allow(l, "a"), allow(l, "b"), allow(l, "b"), allow(l, "")}
	want := []result{{true, 0}, {false, time.Second}, {true, 0}, {false, time.Second}, {true, 0}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Allow results (-want +got):\n%s", diff)
	}
}

func TestIdleClientsAreEvicted(t *testing.T) {
	clk := newClock()
	l := New(1, 1, clk.now)
	allow(l, "a")
	clk.advance(5 * time.Minute)
	allow(l, "b")
	clk.advance(5*time.Minute + time.Second) // a idle 10m1s, b 5m1s
	allow(l, "c")
	if got := l.Len(); got != 2 {
		t.Errorf("Len after a went idle = %d, want 2 (b, c)", got)
	}
	clk.advance(IdleAfter)
	allow(l, "c")
	if got := l.Len(); got != 1 {
		t.Errorf("Len after b went idle = %d, want 1 (c)", got)
	}
}

func TestSlowRefillKeepsClientsLonger(t *testing.T) {
	clk := newClock()
	l := New(1.0/3600, 1, clk.now) // one an hour
	if r := allow(l, "a"); !r.OK {
		t.Fatal("first request denied")
	}
	clk.advance(30 * time.Minute) // idle longer than IdleAfter, shorter than a refill
	allow(l, "b")
	got := allow(l, "a")
	want := result{false, 30 * time.Minute}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("a after 30 min (-want +got):\n%s", diff)
	}
}

func TestMaxClientsEvictsLeastRecentlySeen(t *testing.T) {
	clk := newClock()
	l := New(1, 1, clk.now)
	l.max = 3
	for _, id := range []string{"a", "b", "c"} {
		allow(l, id)
	}
	allow(l, "a") // a is now the most recent; b the least
	allow(l, "d") // evicts b
	if got := l.Len(); got != 3 {
		t.Fatalf("Len = %d, want 3", got)
	}
	// a and c are still limited; b was forgotten and starts with a full bucket.
	// (b last: bringing it back evicts the least recent again.)
	got := map[string]bool{}
	for _, id := range []string{"a", "c", "b"} {
		got[id] = allow(l, id).OK
	}
	want := map[string]bool{"a": false, "b": true, "c": false}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("allowed after eviction (-want +got):\n%s", diff)
	}
}

func TestDefaultMaxClients(t *testing.T) {
	clk := newClock()
	l := New(10, 10, clk.now)
	for i := range MaxClients + 500 {
		allow(l, fmt.Sprintf("client-%d", i))
	}
	if got := l.Len(); got != MaxClients {
		t.Errorf("Len = %d, want %d", got, MaxClients)
	}
}

func TestOff(t *testing.T) {
	for _, rate := range []float64{0, -1, math.NaN(), math.Inf(1)} {
		l := New(rate, 0, nil)
		for range 1000 {
			if ok, ra := l.Allow("a"); !ok || ra != 0 {
				t.Fatalf("New(%v).Allow = %v, %v; want limiting off", rate, ok, ra)
			}
		}
		if l.Len() != 0 {
			t.Errorf("New(%v) tracks %d clients, want 0", rate, l.Len())
		}
	}
	var nilLimiter *Limiter
	if ok, _ := nilLimiter.Allow("a"); !ok || nilLimiter.Len() != 0 {
		t.Errorf("nil Limiter does not allow everything")
	}
}

func TestBurstBelowOne(t *testing.T) {
	clk := newClock()
	l := New(1, 0, clk.now)
	got := []result{allow(l, "a"), allow(l, "a")}
	want := []result{{true, 0}, {false, time.Second}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("burst 0 (-want +got):\n%s", diff)
	}
}

func TestClockGoingBackwards(t *testing.T) {
	clk := newClock()
	l := New(1, 1, clk.now)
	allow(l, "a")
	clk.advance(-time.Hour)
	if r := allow(l, "a"); r.OK || r.RetryAfter <= 0 {
		t.Errorf("after the clock went back: %+v, want denied with a positive wait", r)
	}
}

func TestConcurrentUse(t *testing.T) {
	clk := newClock()
	l := New(1, 5, clk.now)
	l.max = 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				if ok, _ := l.Allow(fmt.Sprintf("c%d", (g+i)%4)); ok {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	// Four clients, the clock stands still: each gets its burst of 5.
	if allowed != 20 {
		t.Errorf("allowed %d requests, want 20", allowed)
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "1"},
		{time.Nanosecond, "1"},
		{500 * time.Millisecond, "1"},
		{time.Second, "1"},
		{time.Second + time.Millisecond, "2"},
		{30 * time.Minute, "1800"},
	}
	for _, tt := range tests {
		if got := RetryAfterSeconds(tt.d); got != tt.want {
			t.Errorf("RetryAfterSeconds(%v) = %s, want %s", tt.d, got, tt.want)
		}
	}
}
