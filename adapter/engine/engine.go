// Package engine pushes kapfhir's resources to one EHR endpoint: it leases a
// patient's queued items (package outbox), prepares each body for the EHR
// (package outbound), writes it idempotently by kapfhir's identifier, and
// records the outcome and the crosswalk to the EHR's ids.
//
// Write strategy, per resource type, from the EHR's CapabilityStatement:
// a conditional update (PUT Type?identifier=system|value) when the EHR
// supports it; otherwise an update by the EHR's id (If-Match its versionId)
// when the crosswalk or a search by identifier knows it, else a create (with
// If-None-Exist when supported). A search that finds several resources for
// one identifier is reported as a duplicate and never "fixed" by writing.
//
// Failures: a content rejection (400, 422, a first 403, 404, 405) makes the
// item dead with the EHR's OperationOutcome; 409 and 412 re-read and re-plan
// once, then retry later; 429, 5xx and transport failures retry later with
// backoff (never dead: an outage delays, it does not lose); credentials the
// EHR keeps refusing mark the endpoint auth-failed and stop its worker.
//
// Records: every write sent to the EHR is an outbound-write audit record,
// and every version the EHR now holds has a Provenance (see record.go);
// both are written in the transaction that records the item's result.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kapfhir/kapfhir/adapter/ehrclient"
	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/groupcommit"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/treatment"
)

// Store is what the engine needs of the store.
type Store interface {
	Lease(ctx context.Context, l outbox.Lease) ([]outbox.Batch, error)
	FinishBatch(ctx context.Context, rs []outbox.Result) ([]error, error)
	Links(ctx context.Context, endpointID string, keys []resource.Key) (map[resource.Key]outbox.Item, error)
	Read(ctx context.Context, typ, id string) (resource.Version, error)
	SetEndpointState(ctx context.Context, id string, state endpoint.AuthState, lastError string, now time.Time) error
	Renew(ctx context.Context, endpointID, patientID, owner string, until time.Time) error
	Upcoming(ctx context.Context, endpointID string, now time.Time, limit int) ([]string, error)
}

// EHR is what the engine needs of the EHR client.
type EHR interface {
	Do(ctx context.Context, r ehrclient.Request) (*ehrclient.Response, error)
	Capabilities(ctx context.Context) (*ehrclient.Capabilities, error)
	Transaction(ctx context.Context, bundle []byte, idempotent bool) (*ehrclient.Response, error)
}

// Options configures a Worker.
type Options struct {
	Endpoint endpoint.Endpoint
	// IdentifierSystem is kapfhir's identifier system (every resource
	// carries identifier {system, value: its id}).
	IdentifierSystem string
	// Source is the installation id: the observer of the audit records of
	// writes and the Device of their Provenance.
	Source string
	Store  Store
	EHR    EHR
	// Owner names this process in leases; unique per process.
	Owner string
	// LeaseFor is how long a lease lasts before another process may take
	// the work over. Default: 2 minutes, at least 4 request timeouts.
	LeaseFor time.Duration
	// Poll is how often an idle worker looks for due work without being
	// notified (retries coming due). Default: 1 second.
	Poll   time.Duration
	Now    func() time.Time
	Logger *slog.Logger
	// OnBatch is called after each batch is finished (progress).
	OnBatch func()
}

// Worker pushes one endpoint's queue. Run it; Notify it after enqueueing.
type Worker struct {
	o   Options
	ep  endpoint.Endpoint
	log *slog.Logger

	mu         sync.Mutex
	wake       chan struct{}
	caps       *ehrclient.Capabilities
	pauseUntil time.Time
	// outage counts consecutive batches cut short by an unreachable EHR;
	// the pause before the next lease grows with it.
	outage int
	leases atomic.Int64
	// noTransactions is set once the EHR refuses transaction Bundles as
	// unsupported (404, 405, 501) although it advertises them.
	noTransactions atomic.Bool
	// txMax is the most entries the EHR was seen to take in a transaction
	// Bundle (0: not known to be bounded).
	txMax atomic.Int64

	// lookupMu serialises patient look-ups; lookedUp holds the answers
	// looked up ahead for the batches about to be leased.
	lookupMu sync.Mutex
	lookedUp map[string]patientAnswer
	// leased are patients whose batches lanes leased and did not look up yet.
	leased map[string]bool

	// finishes groups the results of the lanes' batches into shared
	// FinishBatch transactions (group commit).
	finishes *groupcommit.Batcher[outbox.Result]
}

// ErrAuthFailed ends Run when the EHR keeps refusing kapfhir's credentials;
// the endpoint is marked auth-failed in the store.
var ErrAuthFailed = errors.New("engine: the EHR refused kapfhir's credentials")

// New returns a worker.
func New(o Options) *Worker {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Poll <= 0 {
		o.Poll = time.Second
	}
	if o.LeaseFor <= 0 {
		o.LeaseFor = max(2*time.Minute, 4*o.Endpoint.Timeout())
	}
	return &Worker{o: o, ep: o.Endpoint, log: o.Logger.With("endpoint", o.Endpoint.ID), wake: make(chan struct{}), lookedUp: map[string]patientAnswer{}, leased: map[string]bool{},
		finishes: groupcommit.New(maxFinish, o.Store.FinishBatch)}
}

// maxFinish bounds the results finished in one transaction (a few lanes'
// batches).
const maxFinish = 256

// Notify wakes idle workers: work was enqueued.
func (w *Worker) Notify() {
	w.mu.Lock()
	close(w.wake)
	w.wake = make(chan struct{})
	w.mu.Unlock()
}

func (w *Worker) wakeChan() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.wake
}

// unreachable records a batch cut short by an unreachable EHR and stops
// leasing for a backoff that grows with consecutive outages.
func (w *Worker) unreachable() {
	w.mu.Lock()
	w.outage++
	t := w.o.Now().Add(w.backoff(w.outage, 0))
	if t.After(w.pauseUntil) {
		w.pauseUntil = t
	}
	w.mu.Unlock()
}

// reachable ends an outage.
func (w *Worker) reachable() {
	w.mu.Lock()
	w.outage = 0
	w.mu.Unlock()
}

func (w *Worker) paused() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pauseUntil.Sub(w.o.Now())
}

// Run pushes until ctx ends (nil) or the EHR refuses the credentials
// (ErrAuthFailed). It runs the endpoint's concurrency of lanes, each leasing
// one patient's batch at a time.
func (w *Worker) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for range max(w.ep.Concurrency, 1) {
		wg.Go(func() {
			if err := w.lane(ctx); err != nil {
				cancel(err)
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); errors.Is(err, ErrAuthFailed) {
		return err
	}
	return nil
}

func (w *Worker) lane(ctx context.Context) error {
	// A lane keeps the store's writer, which the other lanes share, off its
	// path: it leases its next batch while it pushes one, and finishes a
	// batch in the background while it pushes the next (at most one of
	// each outstanding).
	l := &pipeline{}
	defer func() {
		l.release(w)
		l.wait()
	}()
	for ctx.Err() == nil {
		wake := w.wakeChan()
		wait := w.o.Poll
		if d := w.paused(); d > 0 {
			wait = d
			l.release(w) // the lease would run out while paused
		} else {
			n, err := w.once(ctx, l)
			switch {
			case errors.Is(err, ErrAuthFailed):
				return err
			case err != nil && ctx.Err() == nil:
				w.log.Warn("sync round failed", "error", err)
			case n > 0:
				continue
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
	return nil
}

// Once leases one patient's batch and pushes it; it returns how many items
// it finished (0: nothing was due).
func (w *Worker) Once(ctx context.Context) (int, error) { return w.once(ctx, nil) }

// pipeline is a lane's work off its path: the lease of its next batch, taken
// while it pushes one, and the finish of its last batch, written while it
// pushes the next. A nil pipeline leases and finishes in the foreground.
type pipeline struct {
	ahead chan leased   // the next lease, being taken
	prev  chan struct{} // the last finish, being written
}

// leased is a lease taken: its owner, batches and when it was taken.
type leased struct {
	owner   string
	batches []outbox.Batch
	at      time.Time
	err     error
}

// run runs finish, in the background once the previous one has ended.
func (p *pipeline) run(finish func()) {
	if p == nil {
		finish()
		return
	}
	p.wait()
	done := make(chan struct{})
	p.prev = done
	go func() {
		defer close(done)
		finish()
	}()
}

// wait waits for the outstanding finish, if any.
func (p *pipeline) wait() {
	if p != nil && p.prev != nil {
		<-p.prev
		p.prev = nil
	}
}

// next returns the lease taken ahead, or takes one now (also when the one
// taken ahead found nothing: work may have come since).
func (p *pipeline) next(ctx context.Context, w *Worker) leased {
	if p != nil && p.ahead != nil {
		l := <-p.ahead
		p.ahead = nil
		if l.err == nil && len(l.batches) > 0 {
			return l
		}
	}
	return w.lease(ctx)
}

// prefetch starts taking the next lease.
func (p *pipeline) prefetch(ctx context.Context, w *Worker) {
	if p == nil || p.ahead != nil {
		return
	}
	ch := make(chan leased, 1)
	p.ahead = ch
	go func() { ch <- w.lease(ctx) }()
}

// release gives back a lease taken ahead and not pushed (the lane stops or
// pauses): its items are due again at once, for any lane or process.
func (p *pipeline) release(w *Worker) {
	if p == nil || p.ahead == nil {
		return
	}
	l := <-p.ahead
	p.ahead = nil
	var rs []outbox.Result
	for _, b := range l.batches {
		for _, it := range b.Items {
			rs = append(rs, w.result(it, result{outcome: outbox.Release}, l.owner))
		}
	}
	if len(rs) == 0 {
		return
	}
	for i, err := range w.finishes.Do(context.Background(), rs...) {
		if err != nil {
			w.log.Warn("releasing a leased item failed; its lease will expire", "item", rs[i].ItemID, "error", err)
		}
	}
}

// lease leases the batch of the next patient due. Each lease has its own
// owner name, so that a batch taken over after its lease expired (even by
// another lane of this process) can no longer be finished by the lane that
// lost it.
func (w *Worker) lease(ctx context.Context) leased {
	owner := fmt.Sprintf("%s/%d", w.o.Owner, w.leases.Add(1))
	at := w.o.Now()
	batches, err := w.o.Store.Lease(ctx, outbox.Lease{
		EndpointID: w.ep.ID, Owner: owner, MaxPatients: 1, Now: at, For: w.o.LeaseFor,
	})
	w.leasedPatients(batches)
	return leased{owner: owner, batches: batches, at: at, err: err}
}

// once is Once in a lane's pipeline p; it returns how many items it
// finished, or will finish (p not nil).
func (w *Worker) once(ctx context.Context, p *pipeline) (int, error) {
	l := p.next(ctx, w)
	if l.err != nil {
		return 0, fmt.Errorf("lease: %w", l.err)
	}
	if len(l.batches) > 0 {
		p.prefetch(ctx, w) // more is likely due
	}
	n := 0
	for _, b := range l.batches {
		k, err := w.push(ctx, b, l.owner, l.at, p)
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// capabilities returns the EHR's capabilities, read once per worker.
func (w *Worker) capabilities(ctx context.Context) (*ehrclient.Capabilities, error) {
	w.mu.Lock()
	c := w.caps
	w.mu.Unlock()
	if c != nil {
		return c, nil
	}
	c, err := w.o.EHR.Capabilities(ctx)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	w.caps = c
	w.mu.Unlock()
	return c, nil
}

// backoff is the wait before attempt n+1 of an item (n ≥ 1 failures so far).
func (w *Worker) backoff(failures int, retryAfter time.Duration) time.Duration {
	d := w.ep.Retry.MinBackoff.D()
	for i := 1; i < failures && d < w.ep.Retry.MaxBackoff.D(); i++ {
		d *= 2
	}
	d = min(d, w.ep.Retry.MaxBackoff.D())
	return max(d, retryAfter)
}

func isAuth(err error) bool {
	k := treatment.ErrorKind(err)
	return k == treatment.KindUnauthorized || k == treatment.KindForbidden
}

// pathOnly is method and path without the query (queries hold identifiers).
func pathOnly(method, p string) string {
	p, _, _ = strings.Cut(p, "?")
	return method + " " + p
}

func success(status int) bool { return status == http.StatusOK || status == http.StatusCreated }

// pushOrder is the order a patient's items are written in. References
// point backwards where they can; the cycles are broken so that as few
// resources as possible are written twice: the CarePlan goes first without
// its goals and activities (they are deferred), then Goals, Appointments
// (whose supportingInformation now resolves) and Observations, and the
// second pass writes the CarePlan again, complete.
var pushOrder = []string{"Patient", "CarePlan", "Goal", "Appointment", "Observation"}

func typeOrder(typ string) int {
	if i := slices.Index(pushOrder, typ); i >= 0 {
		return i
	}
	return len(pushOrder)
}

// Strategy describes, in plain words, how the engine writes resources of
// type typ to an EHR with these capabilities, or why it cannot.
func Strategy(caps *ehrclient.Capabilities, typ string) (string, bool) {
	rc, ok := caps.Resources[typ]
	switch {
	case !ok:
		return "the EHR does not list " + typ + " in its CapabilityStatement: cannot write it", false
	case rc.ConditionalUpdate && caps.Supports(typ, "update") && caps.Transaction:
		return "transaction Bundles of conditional updates (PUT " + typ + "?identifier=system|value entries): a patient's changes in one idempotent request, references between them resolved by the EHR (smaller Bundles if it refuses large ones; one request per change if it refuses transactions)", true
	case rc.ConditionalUpdate && caps.Supports(typ, "update"):
		return "conditional update (PUT " + typ + "?identifier=system|value): one idempotent request per change", true
	case !caps.Supports(typ, "search-type"):
		return "the EHR cannot search " + typ + " by identifier and has no conditional update: kapfhir cannot write it without risking duplicates", false
	case !caps.Supports(typ, "create") || !caps.Supports(typ, "update"):
		return "the EHR does not allow both create and update of " + typ + ": cannot keep it in sync", false
	case rc.ConditionalCreate:
		return "search by identifier, then create with If-None-Exist (safe to retry) or update by id with If-Match", true
	default:
		return "search by identifier, then create (a create is never retried blindly: the next attempt searches first) or update by id with If-Match", true
	}
}
