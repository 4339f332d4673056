package adapter

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/kapfhir/kapfhir/adapter/ehrclient"
	"github.com/kapfhir/kapfhir/adapter/engine"
	"github.com/kapfhir/kapfhir/adapter/pull"
	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/seal"
	"github.com/kapfhir/kapfhir/treatment"
)

// Store is what the Manager needs of the store.
type Store interface {
	engine.Store
	Endpoints(ctx context.Context) ([]endpoint.Stored, error)
	Endpoint(ctx context.Context, id string) (endpoint.Stored, error)
	PutEndpoint(ctx context.Context, e endpoint.Stored) error
	DeleteEndpoint(ctx context.Context, id string) error
	Backfill(ctx context.Context, endpointID string, types []string, now time.Time) (int, error)
	Item(ctx context.Context, id int64) (outbox.Item, error)
	Items(ctx context.Context, f outbox.Filter) ([]outbox.Item, error)
	Stats(ctx context.Context, endpointID string) (outbox.Stats, error)
	Replay(ctx context.Context, itemID int64, actor string, now time.Time) error
	ReplayDead(ctx context.Context, endpointID, actor string, now time.Time) (int, error)
	Discard(ctx context.Context, itemID int64, actor string, now time.Time) error
	Log(ctx context.Context, endpointID string, beforeID int64, limit int) ([]outbox.Event, error)
	pull.Store
}

// Options configures a Manager.
type Options struct {
	// Store keeps the endpoints; their secrets are sealed with Seal before
	// they reach it.
	Store Store
	// Seal seals the endpoints' secrets at rest (see secrets.go). Without it
	// (tests) they are stored as given, and sealed ones cannot be used.
	Seal *seal.Box
	// RootCAs verify the EHRs' certificates: the system's and the
	// configured bundle; nil means the system's.
	RootCAs *x509.CertPool
	// IdentifierSystem is kapfhir's identifier system.
	IdentifierSystem string
	// Source is the installation id (audit records' observer, Provenance's Device).
	Source string
	// Configured are the endpoints of the configuration file. They are
	// stored at Start (source "config"; the API cannot change them); a
	// configured endpoint no longer in the file is disabled, not deleted,
	// so its queue and crosswalk survive.
	Configured []endpoint.Endpoint
	// Owner names this process in leases. Default: host name, pid and a
	// random suffix.
	Owner  string
	Now    func() time.Time
	Logger *slog.Logger
	// Transport replaces the EHR clients' transport (tests).
	Transport http.RoundTripper
	// Poll is the idle workers' polling interval (default 1s).
	Poll time.Duration
	// LeaseFor is how long a worker holds a batch (default: engine's).
	LeaseFor time.Duration
	// UserAgent is sent to EHRs.
	UserAgent string
	// Sessions applies appointment statuses pulled from EHRs (the
	// application service); without it nothing is pulled.
	Sessions pull.Sessions
}

// Manager runs the sync of every endpoint.
type Manager struct {
	o   Options // o.Store is the sealingStore over stored
	log *slog.Logger
	// stored is the store as given: endpoints with their secrets sealed,
	// for reads that need no secret (listings, existence, settings), so
	// that an endpoint whose secrets do not open can still be seen and
	// deleted.
	stored  Store
	secrets secrets

	mu       sync.Mutex
	ctx      context.Context // Start's context; nil before Start and after Stop
	running  map[string]*running
	progress chan struct{} // closed and replaced after every finished batch
}

type running struct {
	cancel context.CancelFunc
	done   chan struct{}
	worker *engine.Worker
	poller *pull.Poller // nil when pulling is off
	client *ehrclient.Client
}

// New returns a Manager; call Start to run it.
func New(o Options) *Manager {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Owner == "" {
		host, _ := os.Hostname()
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		o.Owner = fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(b))
	}
	m := &Manager{o: o, log: o.Logger, stored: o.Store, secrets: secrets{box: o.Seal}, running: map[string]*running{}, progress: make(chan struct{})}
	m.o.Store = sealingStore{Store: o.Store, secrets: m.secrets}
	return m
}

// clientOptions are the options of every EHR client the Manager makes.
func (m *Manager) clientOptions() ehrclient.Options {
	return ehrclient.Options{Logger: m.log, Now: m.o.Now, Transport: m.o.Transport, UserAgent: m.o.UserAgent, RootCAs: m.o.RootCAs}
}

// Start checks that every stored endpoint's secrets open with the sealing
// key (sealing those an older kapfhir stored in plaintext), stores the
// configured endpoints and starts a worker for every enabled endpoint whose
// credentials are not known to fail. Workers stop when ctx ends or Stop is
// called.
func (m *Manager) Start(ctx context.Context) error {
	if err := m.sealStored(ctx); err != nil {
		return err
	}
	if err := m.syncConfigured(ctx); err != nil {
		return err
	}
	m.mu.Lock()
	m.ctx = ctx
	m.mu.Unlock()
	eps, err := m.o.Store.Endpoints(ctx)
	if err != nil {
		return fmt.Errorf("adapter: endpoints: %w", err)
	}
	for _, e := range eps {
		m.restart(e)
	}
	return nil
}

// Stop stops every worker and waits for them.
func (m *Manager) Stop() {
	m.mu.Lock()
	rs := m.running
	m.running = map[string]*running{}
	m.ctx = nil
	m.mu.Unlock()
	for _, r := range rs {
		r.cancel()
	}
	for _, r := range rs {
		<-r.done
	}
}

// Notify wakes every worker: work was enqueued.
func (m *Manager) Notify() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.running {
		r.worker.Notify()
	}
}

func (m *Manager) syncConfigured(ctx context.Context) error {
	now := m.o.Now().UTC()
	inFile := map[string]bool{}
	for _, e := range m.o.Configured {
		inFile[e.ID] = true
		st := endpoint.Stored{Endpoint: e, Source: endpoint.SourceConfig, AuthState: endpoint.AuthOK, Created: now, Updated: now}
		old, err := m.o.Store.Endpoint(ctx, e.ID)
		switch {
		case treatment.ErrorKind(err) == treatment.KindNotFound:
		case err != nil:
			return err
		default:
			if old.Source == endpoint.SourceAPI {
				return fmt.Errorf("adapter: endpoint %q is defined both in the configuration file and through the API; delete one", e.ID)
			}
			st.Created = old.Created
			if old.Endpoint.FHIRBaseURL == e.FHIRBaseURL && old.Auth == e.Auth {
				st.AuthState, st.LastError = old.AuthState, old.LastError
			}
		}
		if err := m.o.Store.PutEndpoint(ctx, st); err != nil {
			return fmt.Errorf("adapter: store endpoint %s: %w", e.ID, err)
		}
	}
	eps, err := m.o.Store.Endpoints(ctx)
	if err != nil {
		return err
	}
	for _, e := range eps {
		if e.Source == endpoint.SourceConfig && !inFile[e.ID] && e.Enabled {
			e.Enabled, e.Updated = false, now
			m.log.Warn("endpoint no longer in the configuration file: disabled (its queue is kept)", "endpoint", e.ID)
			if err := m.o.Store.PutEndpoint(ctx, e); err != nil {
				return err
			}
		}
	}
	return nil
}

// restart stops e's worker, if any, and starts a new one when e is enabled
// and its credentials are not known to fail.
func (m *Manager) restart(e endpoint.Stored) {
	m.stop(e.ID)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx == nil || !e.Enabled || e.AuthState == endpoint.AuthFailed {
		return
	}
	client, err := ehrclient.New(e.Endpoint, m.clientOptions())
	if err != nil {
		m.log.Error("cannot start the endpoint's worker", "endpoint", e.ID, "error", err)
		return
	}
	w := engine.New(engine.Options{
		Endpoint: e.Endpoint, IdentifierSystem: m.o.IdentifierSystem, Source: m.o.Source, Store: m.o.Store, EHR: client,
		Owner: m.o.Owner, Poll: m.o.Poll, LeaseFor: m.o.LeaseFor, Now: m.o.Now, Logger: m.log,
		OnBatch: m.advance,
	})
	ctx, cancel := context.WithCancel(m.ctx)
	r := &running{cancel: cancel, done: make(chan struct{}), worker: w, client: client}
	if e.Pull.Enabled && m.o.Sessions != nil {
		r.poller = pull.New(pull.Options{
			Endpoint: e.Endpoint, IdentifierSystem: m.o.IdentifierSystem, Source: m.o.Source, Store: m.o.Store,
			Sessions: m.o.Sessions, EHR: client, Now: m.o.Now, Logger: m.log,
		})
	}
	m.running[e.ID] = r
	go func() {
		defer close(r.done)
		var wg sync.WaitGroup
		if r.poller != nil {
			wg.Go(func() { _ = r.poller.Run(ctx) })
		}
		if err := w.Run(ctx); err != nil {
			m.log.Error("endpoint worker stopped", "endpoint", e.ID, "error", err)
		}
		cancel()
		wg.Wait()
	}()
}

// PullNow polls the endpoint's EHR for appointment changes at once and
// returns how many it applied.
func (m *Manager) PullNow(ctx context.Context, id string) (int, error) {
	e, err := m.stored.Endpoint(ctx, id)
	if err != nil {
		return 0, err
	}
	if !e.Pull.Enabled || m.o.Sessions == nil {
		return 0, treatment.Errorf(treatment.KindConflict, "pulling is not enabled for endpoint %q", id)
	}
	m.mu.Lock()
	r := m.running[id]
	m.mu.Unlock()
	if r == nil || r.poller == nil {
		return 0, treatment.Errorf(treatment.KindUnavailable, "endpoint %q is not running (disabled or auth-failed)", id)
	}
	return r.poller.Once(ctx)
}

func (m *Manager) stop(id string) {
	m.mu.Lock()
	r := m.running[id]
	delete(m.running, id)
	m.mu.Unlock()
	if r != nil {
		r.cancel()
		<-r.done
	}
}

// Running reports whether the endpoint's worker runs.
func (m *Manager) Running(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.running[id]
	if !ok {
		return false
	}
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

// live returns a running worker's rate budget and how it writes (nil, nil
// when the endpoint's worker is not running).
func (m *Manager) live(id string) (*ehrclient.Budget, *engine.Writes) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r, ok := m.running[id]; ok {
		b, w := r.client.Budget(), r.worker.Writes()
		return &b, &w
	}
	return nil, nil
}

// Endpoints lists the endpoints, secrets redacted (read sealed: listing
// opens nothing).
func (m *Manager) Endpoints(ctx context.Context) ([]endpoint.Stored, error) {
	eps, err := m.stored.Endpoints(ctx)
	for i := range eps {
		eps[i].Endpoint = eps[i].Redacted()
	}
	return eps, err
}

// Endpoint returns one endpoint, secrets redacted, or not_found.
func (m *Manager) Endpoint(ctx context.Context, id string) (endpoint.Stored, error) {
	e, err := m.stored.Endpoint(ctx, id)
	e.Endpoint = e.Redacted()
	return e, err
}

// CreateEndpoint validates and stores a new endpoint and starts its worker.
func (m *Manager) CreateEndpoint(ctx context.Context, e endpoint.Endpoint) (endpoint.Stored, error) {
	if err := endpoint.Validate(e); err != nil {
		return endpoint.Stored{}, err
	}
	if _, err := m.stored.Endpoint(ctx, e.ID); err == nil {
		return endpoint.Stored{}, treatment.Errorf(treatment.KindConflict, "endpoint %q already exists", e.ID)
	} else if treatment.ErrorKind(err) != treatment.KindNotFound {
		return endpoint.Stored{}, err
	}
	now := m.o.Now().UTC()
	st := endpoint.Stored{Endpoint: e, Source: endpoint.SourceAPI, AuthState: endpoint.AuthOK, Created: now, Updated: now}
	if err := m.o.Store.PutEndpoint(ctx, st); err != nil {
		return endpoint.Stored{}, err
	}
	m.log.Info("endpoint created", "endpoint", e.ID)
	m.restart(st)
	st.Endpoint = st.Redacted()
	return st, nil
}

// UpdateEndpoint replaces an endpoint defined through the API. Secrets the
// update leaves empty are kept. It clears an auth failure and restarts the
// worker.
func (m *Manager) UpdateEndpoint(ctx context.Context, e endpoint.Endpoint) (endpoint.Stored, error) {
	old, err := m.o.Store.Endpoint(ctx, e.ID)
	if err != nil {
		return endpoint.Stored{}, err
	}
	if old.Source == endpoint.SourceConfig {
		return endpoint.Stored{}, treatment.Errorf(treatment.KindConflict, "endpoint %q is defined in the configuration file; change it there", e.ID)
	}
	e = e.KeepSecrets(old.Endpoint)
	if err := endpoint.Validate(e); err != nil {
		return endpoint.Stored{}, err
	}
	st := endpoint.Stored{Endpoint: e, Source: old.Source, AuthState: endpoint.AuthOK, Created: old.Created, Updated: m.o.Now().UTC()}
	if err := m.o.Store.PutEndpoint(ctx, st); err != nil {
		return endpoint.Stored{}, err
	}
	m.log.Info("endpoint updated", "endpoint", e.ID)
	m.restart(st)
	st.Endpoint = st.Redacted()
	return st, nil
}

// DeleteEndpoint stops and deletes an endpoint defined through the API,
// with its queue (the sync log stays).
func (m *Manager) DeleteEndpoint(ctx context.Context, id string) error {
	old, err := m.stored.Endpoint(ctx, id)
	if err != nil {
		return err
	}
	if old.Source == endpoint.SourceConfig {
		return treatment.Errorf(treatment.KindConflict, "endpoint %q is defined in the configuration file; remove it there", id)
	}
	m.stop(id)
	if err := m.o.Store.DeleteEndpoint(ctx, id); err != nil {
		return err
	}
	m.log.Info("endpoint deleted", "endpoint", id)
	return nil
}

// Status is an endpoint's sync health for operators.
type Status struct {
	Endpoint endpoint.Stored
	Running  bool
	Queue    outbox.Stats
	// Budget is the current rate budget (nil when the worker is not running).
	Budget *ehrclient.Budget
	// Writes is how the worker writes (nil when it is not running).
	Writes *engine.Writes
}

// Status reports an endpoint's backlog, counts, last error, auth state and
// rate budget.
func (m *Manager) Status(ctx context.Context, id string) (Status, error) {
	e, err := m.Endpoint(ctx, id)
	if err != nil {
		return Status{}, err
	}
	q, err := m.o.Store.Stats(ctx, id)
	if err != nil {
		return Status{}, err
	}
	budget, writes := m.live(id)
	return Status{Endpoint: e, Running: m.Running(id), Queue: q, Budget: budget, Writes: writes}, nil
}

// advance wakes WaitDrained callers.
func (m *Manager) advance() {
	m.mu.Lock()
	close(m.progress)
	m.progress = make(chan struct{})
	m.mu.Unlock()
}

// WaitDrained waits until the endpoint has nothing pending, retrying or in
// flight (dead items do not count), or ctx ends; it returns the last status
// and whether the queue drained.
func (m *Manager) WaitDrained(ctx context.Context, id string) (Status, bool, error) {
	for {
		m.mu.Lock()
		progress := m.progress
		m.mu.Unlock()
		s, err := m.Status(ctx, id)
		if err != nil {
			return s, false, err
		}
		if s.Queue.Backlog() == 0 {
			return s, true, nil
		}
		t := time.NewTimer(time.Second) // retries come due without progress
		select {
		case <-ctx.Done():
			t.Stop()
			return s, false, nil
		case <-progress:
		case <-t.C:
		}
		t.Stop()
	}
}

// Backfill queues the current version of everything the endpoint takes.
func (m *Manager) Backfill(ctx context.Context, id string) (int, error) {
	e, err := m.stored.Endpoint(ctx, id)
	if err != nil {
		return 0, err
	}
	n, err := m.o.Store.Backfill(ctx, id, e.ResourceTypes, m.o.Now().UTC())
	if err != nil {
		return 0, err
	}
	m.log.Info("backfill queued", "endpoint", id, "items", n)
	m.Notify()
	return n, nil
}

// Items lists queue items.
func (m *Manager) Items(ctx context.Context, f outbox.Filter) ([]outbox.Item, error) {
	return m.o.Store.Items(ctx, f)
}

// Item returns one queue item.
func (m *Manager) Item(ctx context.Context, id int64) (outbox.Item, error) {
	return m.o.Store.Item(ctx, id)
}

// Replay makes an item pending again; actor is recorded.
func (m *Manager) Replay(ctx context.Context, id int64, actor string) error {
	if err := m.o.Store.Replay(ctx, id, actor, m.o.Now().UTC()); err != nil {
		return err
	}
	m.Notify()
	return nil
}

// ReplayDead replays every dead item of an endpoint.
func (m *Manager) ReplayDead(ctx context.Context, endpointID, actor string) (int, error) {
	if _, err := m.stored.Endpoint(ctx, endpointID); err != nil {
		return 0, err
	}
	n, err := m.o.Store.ReplayDead(ctx, endpointID, actor, m.o.Now().UTC())
	if err != nil {
		return 0, err
	}
	m.Notify()
	return n, nil
}

// Discard gives up on a dead or retrying item; actor is recorded.
func (m *Manager) Discard(ctx context.Context, id int64, actor string) error {
	return m.o.Store.Discard(ctx, id, actor, m.o.Now().UTC())
}

// Log returns sync log events, newest first.
func (m *Manager) Log(ctx context.Context, endpointID string, beforeID int64, limit int) ([]outbox.Event, error) {
	return m.o.Store.Log(ctx, endpointID, beforeID, limit)
}
