package ehrclient

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/kapfhir/kapfhir/endpoint"
)

// Budget is an endpoint's current request budget, for the operator status API.
type Budget struct {
	// PerSecond is the rate in force now: the configured rate, or less
	// after the EHR answered 429.
	PerSecond float64 `json:"perSecond"`
	Burst     int     `json:"burst"`
	// ConfiguredPerSecond is the rate the endpoint is configured for; the
	// limiter never goes above it.
	ConfiguredPerSecond float64 `json:"configuredPerSecond"`
}

// Limiter is a token bucket that slows down when the EHR answers 429: each 429
// halves the rate (at most once per cooldown, so one burst of concurrent 429s
// counts once; never below a tenth of the configured rate), and each success
// adds back a twentieth of the configured rate, never above it.
type Limiter struct {
	lim        *rate.Limiter
	configured rate.Limit
	floor      rate.Limit
	step       rate.Limit
	now        func() time.Time

	mu        sync.Mutex
	lastDecay time.Time
}

// limiterCooldown is the least time between two halvings.
const limiterCooldown = time.Second

// NewLimiter returns a limiter at the configured rate. now may be nil
// (time.Now).
func NewLimiter(rl endpoint.RateLimit, now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	r := rate.Limit(rl.PerSecond)
	if r <= 0 {
		r = rate.Inf
	}
	burst := max(rl.Burst, 1)
	return &Limiter{
		lim:        rate.NewLimiter(r, burst),
		configured: r,
		floor:      r / 10,
		step:       r / 20,
		now:        now,
	}
}

// Wait blocks until the budget allows one request, or ctx is done.
func (l *Limiter) Wait(ctx context.Context) error {
	return l.lim.Wait(ctx)
}

// On429 halves the rate, unless it was halved less than a cooldown ago.
func (l *Limiter) On429() {
	if l.configured == rate.Inf {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if !l.lastDecay.IsZero() && now.Sub(l.lastDecay) < limiterCooldown {
		return
	}
	l.lastDecay = now
	l.lim.SetLimitAt(now, max(l.lim.Limit()/2, l.floor))
}

// OnSuccess raises the rate by one step towards the configured rate.
func (l *Limiter) OnSuccess() {
	if l.configured == rate.Inf {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if cur := l.lim.Limit(); cur < l.configured {
		l.lim.SetLimitAt(l.now(), min(cur+l.step, l.configured))
	}
}

// Budget returns the rate and burst in force.
func (l *Limiter) Budget() Budget {
	return Budget{
		PerSecond:           float64(l.lim.Limit()),
		Burst:               l.lim.Burst(),
		ConfiguredPerSecond: float64(l.configured),
	}
}
