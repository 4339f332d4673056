package store

import (
	"context"
	"time"

	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/resource"
)

// SyncTx is the sync part of a transaction: a domain change enqueues its sync
// work in the same transaction (see package outbox).
type SyncTx interface {
	// Endpoints returns every stored endpoint, by id.
	Endpoints(ctx context.Context) ([]endpoint.Stored, error)
	// Enqueue records work, coalescing per endpoint and resource: the item's
	// wanted version becomes the larger of the two, it moves to the end of
	// the order (a new Seq), and a succeeded, dead or discarded item becomes
	// pending with no attempts. An in-flight or retrying item keeps its
	// state; its new version is sent when the current attempt finishes.
	// A new item is pending, runnable at now. Work for an endpoint that
	// does not exist (any more) is dropped.
	Enqueue(ctx context.Context, work []outbox.Work, now time.Time) error
}

// Sync is the queue and endpoint side of the store, used by the sync engine
// and the operators' API. Each method is its own transaction.
type Sync interface {
	// Endpoints returns every stored endpoint, by id.
	Endpoints(ctx context.Context) ([]endpoint.Stored, error)
	// Endpoint returns one endpoint, or not_found.
	Endpoint(ctx context.Context, id string) (endpoint.Stored, error)
	// PutEndpoint creates or replaces an endpoint (Created is kept on replace).
	PutEndpoint(ctx context.Context, e endpoint.Stored) error
	// DeleteEndpoint removes an endpoint and its queue (the sync log stays),
	// or not_found.
	DeleteEndpoint(ctx context.Context, id string) error
	// SetEndpointState records the endpoint's auth state and last error, or not_found.
	SetEndpointState(ctx context.Context, id string, state endpoint.AuthState, lastError string, now time.Time) error

	// Backfill enqueues the current version of every stored resource of the
	// given types for the endpoint (see SyncTx.Enqueue) and returns how many.
	// A resource's patient is itself for a Patient, else its "patient" or
	// "subject" search reference.
	Backfill(ctx context.Context, endpointID string, types []string, now time.Time) (int, error)
	// Lease leases runnable items, one batch per patient, oldest first (by
	// the patient's smallest runnable Seq); each batch holds every runnable
	// item of its patient, by Seq. Concurrent leasers, in any number of
	// processes, never get the same item or the same patient. An unknown
	// endpoint has nothing to lease. Items without a patient ("") form one
	// batch.
	Lease(ctx context.Context, l outbox.Lease) ([]outbox.Batch, error)
	// Upcoming returns the patients (not "") whose runnable items at now are
	// next in Lease's order and are not leased, at most limit (default 32,
	// at most 1000): the batches the endpoint's workers are about to lease.
	// It leases nothing (the engine looks those patients up in the EHR
	// together).
	Upcoming(ctx context.Context, endpointID string, now time.Time, limit int) ([]string, error)
	// Finish records what happened to a leased item and appends it to the
	// log (except a Release); a conflict error when the lease was lost (the
	// item is not in flight under r.Owner, or is gone).
	Finish(ctx context.Context, r outbox.Result) error
	// FinishBatch finishes several items in one transaction. A lost lease
	// is that item's conflict error in the returned slice (the others are
	// still applied); any other error fails them all.
	FinishBatch(ctx context.Context, rs []outbox.Result) ([]error, error)
	// Item returns one item, or not_found.
	Item(ctx context.Context, id int64) (outbox.Item, error)
	// Items lists items matching f, by id, at most f.Limit (default 100,
	// at most 1000).
	Items(ctx context.Context, f outbox.Filter) ([]outbox.Item, error)
	// Links returns the items of the given resources at the endpoint (the
	// crosswalk to the EHR's ids), keyed by resource; missing ones are absent.
	Links(ctx context.Context, endpointID string, keys []resource.Key) (map[resource.Key]outbox.Item, error)
	// Stats summarises an endpoint's queue; ByState has every state.
	Stats(ctx context.Context, endpointID string) (outbox.Stats, error)
	// Renew extends the lease on the owner's in-flight items of one patient
	// at an endpoint until until (a long batch keeps its lease); a conflict
	// when the owner holds none any more.
	Renew(ctx context.Context, endpointID, patientID, owner string, until time.Time) error
	// Replay makes an item pending again (forgetting the hash of the last
	// body sent, so it is sent again) with no attempts and logs who did
	// it; not_found for an unknown item, conflict for one in flight.
	Replay(ctx context.Context, itemID int64, actor string, now time.Time) error
	// ReplayDead replays every dead item of an endpoint and returns how many.
	ReplayDead(ctx context.Context, endpointID, actor string, now time.Time) (int, error)
	// Discard gives up on a dead or retrying item (state discarded) and logs
	// who did it; conflict for an item in another state.
	Discard(ctx context.Context, itemID int64, actor string, now time.Time) error
	// AppendLog appends an event that is not a queue change (e.g. a change
	// pulled from the EHR) to the sync log; its ID is assigned, the rest is
	// stored as given.
	AppendLog(ctx context.Context, e outbox.Event) error
	// Log returns sync log events of an endpoint (all when ""), newest first,
	// with ID < beforeID when beforeID > 0, at most limit (default 100, at
	// most 1000).
	Log(ctx context.Context, endpointID string, beforeID int64, limit int) ([]outbox.Event, error)
}
