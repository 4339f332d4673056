// Package throttle limits the request rate of each client of the HTTP
// server: a token bucket per client id (golang.org/x/time/rate), with the
// memory it holds bounded by evicting idle clients and, past MaxClients, the
// least recently seen one.
//
// The caller chooses the client id: the authenticated client when there is
// one, else the remote address. Never take it from a header the client
// controls (X-Forwarded-For) unless a trusted proxy sets it, or every request
// can claim a fresh bucket.
package throttle

import (
	"container/list"
	"math"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

const (
	// MaxClients bounds the clients tracked at once. When a new client
	// arrives at the bound, the least recently seen one is forgotten (and
	// starts again with a full bucket when it comes back).
	MaxClients = 10000
	// IdleAfter is how long a client may go unseen before it is forgotten;
	// longer when a full bucket takes longer than that to refill, so that
	// forgetting a client never gives it more than waiting would have.
	IdleAfter = 10 * time.Minute
	// maxIdle caps the idle time for very slow rates.
	maxIdle = 24 * time.Hour
)

// Limiter is a set of token buckets, one per client id. It is safe for
// concurrent use. A nil *Limiter allows everything.
type Limiter struct {
	limit rate.Limit
	burst int
	now   func() time.Time
	off   bool

	mu      sync.Mutex
	idle    time.Duration
	max     int
	clients map[string]*list.Element // of *client
	lru     *list.List               // front: most recently seen
}

type client struct {
	id   string
	lim  *rate.Limiter
	seen time.Time
}

// New returns a Limiter that lets each client make perSecond requests a
// second on average and burst at once. now is the clock (time.Now when nil).
// perSecond <= 0 (or NaN, or +Inf) turns limiting off: Allow always says yes.
// burst < 1 counts as 1.
func New(perSecond float64, burst int, now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	burst = max(burst, 1)
	l := &Limiter{
		limit:   rate.Limit(perSecond),
		burst:   burst,
		now:     now,
		idle:    IdleAfter,
		max:     MaxClients,
		clients: map[string]*list.Element{},
		lru:     list.New(),
	}
	if !(perSecond > 0) || math.IsInf(perSecond, 1) {
		l.off = true
		return l
	}
	// The time a drained bucket takes to fill up again.
	if refill := float64(burst) / perSecond; refill > l.idle.Seconds() {
		l.idle = time.Duration(math.Min(refill, maxIdle.Seconds()) * float64(time.Second))
	}
	return l
}

// Allow takes one token from clientID's bucket. When the bucket is empty it
// returns false and how long until a token is available (for Retry-After).
func (l *Limiter) Allow(clientID string) (ok bool, retryAfter time.Duration) {
	if l == nil || l.off {
		return true, 0
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evictIdle(now)
	c := l.touch(clientID, now)
	if c.lim.AllowN(now, 1) {
		return true, 0
	}
	missing := 1 - c.lim.TokensAt(now)
	wait := time.Duration(math.Ceil(missing / float64(l.limit) * float64(time.Second)))
	return false, max(wait, time.Nanosecond)
}

// Len is the number of clients tracked.
func (l *Limiter) Len() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.clients)
}

// touch returns clientID's entry, created if needed, marked as seen now.
func (l *Limiter) touch(clientID string, now time.Time) *client {
	if e, ok := l.clients[clientID]; ok {
		c := e.Value.(*client)
		c.seen = now
		l.lru.MoveToFront(e)
		return c
	}
	for len(l.clients) >= l.max {
		l.remove(l.lru.Back())
	}
	c := &client{id: clientID, lim: rate.NewLimiter(l.limit, l.burst), seen: now}
	// Anchor the (full) bucket at now, so refill counts from the first request.
	c.lim.SetBurstAt(now, l.burst)
	l.clients[clientID] = l.lru.PushFront(c)
	return c
}

// evictIdle forgets the clients not seen for longer than the idle time,
// oldest first.
func (l *Limiter) evictIdle(now time.Time) {
	for e := l.lru.Back(); e != nil; e = l.lru.Back() {
		if now.Sub(e.Value.(*client).seen) <= l.idle {
			return
		}
		l.remove(e)
	}
}

func (l *Limiter) remove(e *list.Element) {
	c := l.lru.Remove(e).(*client)
	delete(l.clients, c.id)
}

// RetryAfterSeconds renders a wait as a Retry-After header value: whole
// seconds, rounded up, at least 1.
func RetryAfterSeconds(d time.Duration) string {
	s := int64(math.Ceil(d.Seconds()))
	return strconv.FormatInt(max(s, 1), 10)
}
