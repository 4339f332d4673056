package engine

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/kapfhir/kapfhir/adapter/ehrclient"
	"github.com/kapfhir/kapfhir/adapter/outbound"
	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/fhir/fhirjson"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/treatment"
)

// batch is one patient's push in progress.
type batch struct {
	w     *Worker
	b     outbox.Batch
	links map[resource.Key]outbox.Item // crosswalk, filled as the batch goes
	queue map[resource.Key]bool        // keys of this batch not yet written
	// patientEHRID is the EHR's id of the patient ("" when not found).
	patientEHRID string
	patientErr   string
	// loads are the items' stored versions, read and parsed ahead of their
	// writes (see loadAhead).
	loads map[int64]*loaded
	// bundled are the fullUrls of the entries of the transaction Bundle
	// being built that the EHR does not hold yet (see transaction).
	bundled map[resource.Key]string
	// wrote records a write sent to the EHR (its audit record) and returns
	// r stamped with the time of the answer.
	wrote func(it outbox.Item, r result, err error) result
	// keep reports whether the batch's lease is still held.
	keep func() bool
}

// loaded is one item's stored version, read and parsed while the writes
// before it are in flight: parsing is most of the CPU a write costs, and
// doing it ahead keeps a lane's requests back to back.
type loaded struct {
	ready    chan struct{}
	v        resource.Version
	notFound bool
	err      error // reading failed
	parsed   *outbound.Parsed
	parseErr error
}

// loadAhead reads and parses items, in order, in the background; wait
// returns once it is done.
func (bt *batch) loadAhead(ctx context.Context, items []outbox.Item) (wait func()) {
	bt.loads = make(map[int64]*loaded, len(items))
	for _, it := range items {
		bt.loads[it.ID] = &loaded{ready: make(chan struct{})}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, it := range items {
			l := bt.loads[it.ID]
			v, err := bt.w.o.Store.Read(ctx, it.ResourceType, it.ResourceID)
			switch {
			case treatment.ErrorKind(err) == treatment.KindNotFound:
				l.notFound = true
			case err != nil:
				l.err = err
			default:
				l.v = v
				l.parsed, l.parseErr = outbound.Parse(v.JSON)
			}
			close(l.ready)
		}
	}()
	return func() { <-done }
}

// result is one write's outcome.
type result struct {
	outcome    outbox.Outcome
	status     int
	ehrID      string
	ehrVersion string
	hash       []byte
	version    int64
	errMsg     string
	opOut      []byte
	retryAfter time.Duration
	request    string
	deferred   []resource.Key
	// at is when the EHR answered the write (set by push).
	at time.Time
}

// push writes one patient's batch, leased by owner at leasedAt, and
// finishes every item in it. An auth failure releases what is left and
// returns ErrAuthFailed; an unreachable EHR retries the item, releases the
// rest and pauses the worker.
func (w *Worker) push(ctx context.Context, b outbox.Batch, owner string, leasedAt time.Time, p *pipeline) (int, error) {
	// A batch leased ahead waited for the lane's previous push. Past a
	// third of its lease (when the heartbeat below would first renew it)
	// it may have run out, and another worker may have taken it over and
	// be writing it: written by both, the EHR would hold a version the
	// crosswalk does not name. Renewed first, it is this lane's for a
	// whole lease, or left to the worker that took it.
	if w.o.Now().Sub(leasedAt) >= w.o.LeaseFor/3 {
		if err := w.o.Store.Renew(ctx, w.ep.ID, b.PatientID, owner, w.o.Now().Add(w.o.LeaseFor)); err != nil {
			if ctx.Err() == nil {
				w.log.Warn("a batch leased ahead was taken over before its turn; leaving it to the worker that holds it", "patient", b.PatientID, "error", err)
			}
			return 0, nil
		}
	}
	items := slices.Clone(b.Items)
	slices.SortStableFunc(items, func(a, c outbox.Item) int {
		if d := typeOrder(a.ResourceType) - typeOrder(c.ResourceType); d != 0 {
			return d
		}
		return int(a.Seq - c.Seq)
	})
	bt := &batch{w: w, b: b, links: map[resource.Key]outbox.Item{}, queue: map[resource.Key]bool{}}
	for _, it := range items {
		k := resource.Key{Type: it.ResourceType, ID: it.ResourceID}
		bt.links[k] = it
		bt.queue[k] = true
	}
	results := map[int64]result{}
	// audits are the audit records of the writes sent, per item.
	audits := map[int64][]audit.Record{}
	bt.wrote = func(it outbox.Item, r result, err error) result {
		r.at = w.o.Now()
		if rec, ok := w.writeRecord(it, r, err); ok {
			audits[it.ID] = append(audits[it.ID], rec)
		}
		return r
	}
	var stop error
	// The lease is renewed every third of its length while the batch runs
	// (one write may outlast a lease when the EHR asks for long waits); once
	// it is lost, another worker has the batch and this one stops.
	var lost atomic.Bool
	hb, stopHB := context.WithCancel(ctx)
	defer stopHB()
	go func() {
		t := time.NewTicker(max(w.o.LeaseFor/3, time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-hb.Done():
				return
			case <-t.C:
				if err := w.o.Store.Renew(hb, w.ep.ID, b.PatientID, owner, w.o.Now().Add(w.o.LeaseFor)); err != nil && hb.Err() == nil {
					w.log.Warn("lost the lease of a batch; another worker has it", "patient", b.PatientID, "error", err)
					lost.Store(true)
					return
				}
			}
		}
	}()
	bt.keep = func() bool { return !lost.Load() }
	// finish records every item's result in one transaction, in p, and
	// returns how many items it finishes (not released).
	finish := func() int {
		rs := make([]outbox.Result, len(items))
		n := 0
		for i, it := range items {
			r, ok := results[it.ID]
			if !ok {
				r = result{outcome: outbox.Release}
			}
			rs[i] = w.result(it, r, owner)
			rs[i].Audit = audits[it.ID]
			if rs[i].Outcome != outbox.Release {
				n++
			}
		}
		stopHB()
		p.run(func() {
			// Finished together with the other lanes' batches that are
			// finishing meanwhile: one transaction on the store's writer.
			for i, err := range w.finishes.Do(ctx, rs...) {
				if err != nil {
					w.log.Warn("finishing a sync item failed; its lease will expire and the work be taken over", "item", rs[i].ItemID, "error", err)
				}
			}
			if w.o.OnBatch != nil {
				w.o.OnBatch()
			}
		})
		return n
	}
	defer bt.loadAhead(ctx, items)()
	if err := bt.resolvePatient(ctx); err != nil {
		if isAuth(err) {
			return finish(), w.authFailed(ctx, err)
		}
		w.unreachable()
		return finish(), nil
	}

	rest := items
	if caps, err := w.capabilities(ctx); err == nil && w.useTransactions(caps) && len(items) > 1 {
		var halt bool
		var left []outbox.Item
		left, stop, halt = bt.transactions(ctx, items, results)
		if halt {
			if !bt.keep() {
				return 0, nil
			}
			return finish(), stop
		}
		// What is left is written one by one, in push order.
		leftIDs := make(map[int64]bool, len(left))
		for _, it := range left {
			leftIDs[it.ID] = true
		}
		rest = slices.DeleteFunc(slices.Clone(items), func(it outbox.Item) bool { return !leftIDs[it.ID] })
	}
	for _, it := range rest {
		if !bt.keep() {
			return 0, nil
		}
		r, err := bt.write(ctx, it)
		r = bt.wrote(it, r, err)
		if err != nil {
			if isAuth(err) {
				stop = w.authFailed(ctx, err)
				break
			}
			if ctx.Err() != nil {
				break
			}
			// Unreachable: this item retries later, the rest go back as they were.
			results[it.ID] = result{outcome: outbox.Retry, errMsg: err.Error(), retryAfter: w.backoff(it.Attempts+1, 0)}
			w.unreachable()
			break
		}
		w.reachable()
		results[it.ID] = r
	}
	var again []outbox.Item
	for _, it := range items {
		if r, ok := results[it.ID]; ok && (r.outcome == outbox.Sent || r.outcome == outbox.Unchanged) && len(r.deferred) > 0 {
			again = append(again, it)
		}
	}
	// Second pass: resources written without references to what the EHR did
	// not hold yet (the CarePlan ↔ Appointment cycle) are written again now
	// that it does.
	for _, it := range again {
		if stop != nil || ctx.Err() != nil {
			break
		}
		if !bt.keep() {
			return 0, nil
		}
		first := results[it.ID]
		k := resource.Key{Type: it.ResourceType, ID: it.ResourceID}
		l := bt.links[k]
		l.EHRID, l.EHRVersion, l.SentHash, l.SentVersion = first.ehrID, first.ehrVersion, first.hash, first.version
		bt.links[k] = l
		r, err := bt.write(ctx, l)
		r = bt.wrote(it, r, err)
		switch {
		case err != nil && isAuth(err):
			stop = w.authFailed(ctx, err)
		case err != nil:
			first.outcome, first.errMsg, first.retryAfter = outbox.Retry, err.Error(), w.backoff(it.Attempts+1, 0)
			results[it.ID] = first
		default:
			results[it.ID] = r
		}
	}
	return finish(), stop
}

// authFailed marks the endpoint auth-failed and returns ErrAuthFailed.
func (w *Worker) authFailed(ctx context.Context, err error) error {
	w.log.Error("the EHR refused kapfhir's credentials; pausing the endpoint", "error", err)
	if serr := w.o.Store.SetEndpointState(context.WithoutCancel(ctx), w.ep.ID, "auth-failed", err.Error(), w.o.Now()); serr != nil {
		w.log.Error("recording auth failure", "error", serr)
	}
	return ErrAuthFailed
}

// result turns one item's outcome into the store's Result.
func (w *Worker) result(it outbox.Item, r result, owner string) outbox.Result {
	now := w.o.Now()
	res := outbox.Result{
		ItemID: it.ID, Owner: owner, Outcome: r.outcome, Now: now,
		SentVersion: r.version, SentHash: r.hash, EHRID: r.ehrID, EHRVersion: r.ehrVersion,
		Status: r.status, Error: r.errMsg, OpOut: r.opOut, Request: r.request,
	}
	switch r.outcome {
	case outbox.Retry:
		res.RetryAt = now.Add(max(r.retryAfter, w.backoff(it.Attempts+1, 0)))
	case outbox.Sent, outbox.Unchanged:
		if len(r.deferred) > 0 {
			// Written (now or before, unchanged) without some references:
			// send again once they exist.
			res.Outcome = outbox.Retry
			res.RetryAt = now.Add(w.backoff(it.Attempts+1, 0))
			res.Error = fmt.Sprintf("written without references to %d resource(s) the EHR does not hold yet", len(r.deferred))
		}
	}
	if res.Outcome == outbox.Sent {
		// The EHR holds this version, complete: its Provenance.
		res.Provenance = w.provenance(it, r)
	}
	return res
}

// resolvePatient finds the patient in the EHR: through the crosswalk when
// kapfhir pushed it, else by the endpoint's patient identifier system (see
// Worker.lookupPatient).
func (bt *batch) resolvePatient(ctx context.Context) error {
	w := bt.w
	pk := resource.Key{Type: "Patient", ID: bt.b.PatientID}
	if l, ok := bt.links[pk]; ok && l.EHRID != "" {
		bt.patientEHRID = l.EHRID
		return nil
	}
	if ls, err := w.o.Store.Links(ctx, w.ep.ID, []resource.Key{pk}); err == nil {
		if l, ok := ls[pk]; ok && l.EHRID != "" {
			bt.patientEHRID = l.EHRID
			return nil
		}
	}
	p, err := w.lookupPatient(ctx, bt.b.PatientID)
	if err != nil {
		return err
	}
	bt.patientEHRID, bt.patientErr = p.ehrID, p.problem
	return nil
}

// resolver maps references for outbound.Prepare.
func (bt *batch) resolver(ctx context.Context) outbound.Resolver {
	return func(k resource.Key) (string, outbound.Target) {
		if k.Type == "Patient" && k.ID == bt.b.PatientID && bt.patientEHRID != "" {
			return bt.patientEHRID, outbound.Resolved
		}
		if l, ok := bt.links[k]; ok && l.EHRID != "" {
			return l.EHRID, outbound.Resolved
		}
		if !bt.w.ep.Pushes(k.Type) && k.Type != "Patient" {
			return "", outbound.Never
		}
		if u, ok := bt.bundled[k]; ok {
			return u, outbound.Bundled
		}
		if bt.queue[k] {
			return "", outbound.Later
		}
		ls, err := bt.w.o.Store.Links(ctx, bt.w.ep.ID, []resource.Key{k})
		if err == nil {
			if l, ok := ls[k]; ok {
				bt.links[k] = l
				if l.EHRID != "" {
					return l.EHRID, outbound.Resolved
				}
			}
		}
		return "", outbound.Later
	}
}

// ready reads what it needs to send it: the item's stored version and the
// EHR's capabilities. When ok is false, nothing is to be sent and r says
// why; the error is for an unreadable version or an unreachable EHR.
func (bt *batch) ready(ctx context.Context, it outbox.Item) (ld *loaded, caps *ehrclient.Capabilities, r result, ok bool, err error) {
	w := bt.w
	k := resource.Key{Type: it.ResourceType, ID: it.ResourceID}
	delete(bt.queue, k)
	ld = bt.loads[it.ID]
	<-ld.ready
	if ld.notFound {
		// Deleted or never stored: nothing to send.
		return ld, nil, result{outcome: outbox.Unchanged, version: it.WantVersion, ehrID: it.EHRID, ehrVersion: it.EHRVersion, hash: it.SentHash}, false, nil
	}
	if ld.err != nil {
		return ld, nil, result{}, false, fmt.Errorf("read %s: %w", k.Ref(), ld.err)
	}
	v := ld.v
	if k.Type == "Patient" && !w.ep.CreatePatients {
		return ld, nil, result{outcome: outbox.Reject, version: v.VersionID, errMsg: "creating patients in this EHR is not enabled (createPatients)"}, false, nil
	}
	if bt.patientErr != "" && k.Type != "Patient" {
		return ld, nil, result{outcome: outbox.Retry, version: v.VersionID, errMsg: bt.patientErr}, false, nil
	}
	caps, err = w.capabilities(ctx)
	if err != nil {
		return ld, nil, result{}, false, err
	}
	if desc, ok := Strategy(caps, k.Type); !ok {
		return ld, nil, result{outcome: outbox.Reject, version: v.VersionID, errMsg: desc}, false, nil
	}
	return ld, caps, result{}, true, nil
}

// write sends one item's current version and reports the outcome. It
// returns an error only when the EHR is unreachable or refuses the
// credentials (or ctx ends).
func (bt *batch) write(ctx context.Context, it outbox.Item) (result, error) {
	k := resource.Key{Type: it.ResourceType, ID: it.ResourceID}
	ld, caps, r, ok, err := bt.ready(ctx, it)
	if !ok {
		return r, err
	}
	v := ld.v
	rc := caps.Resources[k.Type]
	prep := bt.prepFunc(ctx, ld)

	if rc.ConditionalUpdate && caps.Supports(k.Type, "update") {
		r, err = bt.conditionalUpdate(ctx, it, prep)
	} else {
		r, err = bt.byID(ctx, it, rc, prep)
	}
	r.version = v.VersionID
	if err != nil {
		return r, err
	}
	bt.link(k, r)
	return r, nil
}

// link records in the batch's crosswalk where the EHR holds k after r.
func (bt *batch) link(k resource.Key, r result) {
	if r.outcome != outbox.Sent && r.outcome != outbox.Unchanged {
		return
	}
	l := bt.links[k]
	l.EHRID, l.EHRVersion = r.ehrID, r.ehrVersion
	bt.links[k] = l
	if k.Type == "Patient" && k.ID == bt.b.PatientID && r.ehrID != "" {
		bt.patientEHRID, bt.patientErr = r.ehrID, ""
	}
}

type prepFunc func(ehrID string) (outbound.Prepared, error)

// conditionalUpdate writes with PUT Type?identifier=system|value.
func (bt *batch) conditionalUpdate(ctx context.Context, it outbox.Item, prep prepFunc) (result, error) {
	p, r, ok := bt.prepare(it, "", prep)
	if !ok {
		return r, nil
	}
	if bytes.Equal(p.Hash, it.SentHash) && it.EHRID != "" && it.SentVersion > 0 {
		return result{outcome: outbox.Unchanged, ehrID: it.EHRID, ehrVersion: it.EHRVersion, hash: p.Hash, deferred: p.Deferred}, nil
	}
	path := outbound.ConditionalURL(p)
	resp, err := bt.w.o.EHR.Do(ctx, ehrclient.Request{Method: http.MethodPut, Path: path, Body: p.Body, Idempotent: true})
	if err != nil {
		return result{request: pathOnly(http.MethodPut, path)}, err // attempted: audited
	}
	r = bt.classify(it, resp, p, pathOnly(http.MethodPut, path))
	if resp.Status == http.StatusPreconditionFailed {
		r.outcome = outbox.Reject
		r.errMsg = "the EHR holds several " + it.ResourceType + " resources with kapfhir's identifier (duplicate: reconcile)"
	}
	return r, nil
}

// byID writes by the EHR's id (found in the crosswalk or by a search), or
// creates the resource when the EHR has none.
func (bt *batch) byID(ctx context.Context, it outbox.Item, rc ehrclient.ResourceCapabilities, prep prepFunc) (result, error) {
	w := bt.w
	ehrID, ehrVersion := it.EHRID, it.EHRVersion
	ident := w.o.IdentifierSystem + "|" + it.ResourceID
	for replans := 0; ; replans++ {
		if ehrID == "" {
			ids, err := bt.searchIDs(ctx, it.ResourceType, ident)
			if err != nil {
				return result{}, err
			}
			if len(ids) > 1 {
				return result{outcome: outbox.Reject, errMsg: fmt.Sprintf("the EHR holds %d %s resources with kapfhir's identifier (duplicate: reconcile)", len(ids), it.ResourceType)}, nil
			}
			if len(ids) == 1 {
				ehrID, ehrVersion = ids[0], ""
			}
		}
		if ehrID == "" {
			return bt.create(ctx, it, rc, prep)
		}
		p, r, ok := bt.prepare(it, ehrID, prep)
		if !ok {
			return r, nil
		}
		if bytes.Equal(p.Hash, it.SentHash) && ehrID == it.EHRID && it.SentVersion > 0 {
			return result{outcome: outbox.Unchanged, ehrID: ehrID, ehrVersion: ehrVersion, hash: p.Hash, deferred: p.Deferred}, nil
		}
		hdr := http.Header{}
		if ehrVersion != "" {
			hdr.Set("If-Match", `W/"`+ehrVersion+`"`)
		}
		path := it.ResourceType + "/" + ehrID
		resp, err := w.o.EHR.Do(ctx, ehrclient.Request{Method: http.MethodPut, Path: path, Body: p.Body, Header: hdr, Idempotent: true})
		if err != nil {
			return result{request: pathOnly(http.MethodPut, path)}, err // attempted: audited
		}
		switch {
		case (resp.Status == http.StatusPreconditionFailed || resp.Status == http.StatusConflict) && replans == 0:
			// Someone else changed it: re-read its version and write again, once.
			rr, err := w.o.EHR.Do(ctx, ehrclient.Request{Method: http.MethodGet, Path: path, Idempotent: true})
			if err != nil {
				// The write was refused and could not be planned again.
				return result{request: pathOnly(http.MethodPut, path), status: resp.Status}, err
			}
			if rr.Status == http.StatusOK {
				ehrVersion = rr.VersionID
			} else {
				ehrID, ehrVersion = "", ""
			}
			continue
		case (resp.Status == http.StatusNotFound || resp.Status == http.StatusGone) && replans == 0:
			// Deleted in the EHR: find it again by identifier, or create it.
			ehrID, ehrVersion = "", ""
			continue
		}
		r = bt.classify(it, resp, p, pathOnly(http.MethodPut, path))
		if r.ehrID == "" && success(resp.Status) {
			r.ehrID = ehrID
		}
		return r, nil
	}
}

// create posts a new resource, with If-None-Exist when the EHR supports it
// (then it is safe to retry; a plain POST is never retried blindly).
func (bt *batch) create(ctx context.Context, it outbox.Item, rc ehrclient.ResourceCapabilities, prep prepFunc) (result, error) {
	p, r, ok := bt.prepare(it, "", prep)
	if !ok {
		return r, nil
	}
	hdr := http.Header{}
	if rc.ConditionalCreate {
		hdr.Set("If-None-Exist", outbound.IdentifierQuery(p.Identifier))
	}
	resp, err := bt.w.o.EHR.Do(ctx, ehrclient.Request{Method: http.MethodPost, Path: it.ResourceType, Body: p.Body, Header: hdr, Idempotent: rc.ConditionalCreate})
	if err != nil {
		return result{request: pathOnly(http.MethodPost, it.ResourceType)}, err // attempted: audited
	}
	return bt.classify(it, resp, p, pathOnly(http.MethodPost, it.ResourceType)), nil
}

// prepare builds the body; ok is false when it cannot be sent (the result says why).
func (bt *batch) prepare(it outbox.Item, ehrID string, prep prepFunc) (outbound.Prepared, result, bool) {
	p, err := prep(ehrID)
	if err != nil {
		return p, result{outcome: outbox.Reject, errMsg: "kapfhir could not prepare the resource: " + err.Error()}, false
	}
	if p.MissingPatient != nil {
		msg := bt.patientErr
		if msg == "" {
			msg = "the patient is not resolved in the EHR"
		}
		return p, result{outcome: outbox.Retry, errMsg: msg}, false
	}
	return p, result{}, true
}

// classify turns the EHR's answer into an outcome.
func (bt *batch) classify(it outbox.Item, resp *ehrclient.Response, p outbound.Prepared, req string) result {
	r := result{status: resp.Status, request: req, hash: p.Hash, deferred: p.Deferred}
	switch {
	case success(resp.Status):
		r.outcome = outbox.Sent
		r.ehrID = ehrclient.IDFromLocation(it.ResourceType, resp.Location)
		if r.ehrID == "" {
			if cr, err := fhirjson.Unmarshal(resp.Body); err == nil {
				if k, err := outbound.Identify(cr); err == nil {
					r.ehrID = k.ID
				}
			}
		}
		r.ehrVersion = resp.VersionID
	case resp.Status == http.StatusBadRequest || resp.Status == http.StatusUnprocessableEntity ||
		resp.Status == http.StatusForbidden || resp.Status == http.StatusNotFound || resp.Status == http.StatusMethodNotAllowed:
		r.outcome = outbox.Reject
		r.opOut = resp.Body
		r.errMsg = fmt.Sprintf("the EHR rejected the %s (%d)", it.ResourceType, resp.Status)
	default:
		r.outcome = outbox.Retry
		r.opOut = resp.Body
		r.retryAfter = resp.RetryAfter
		r.errMsg = fmt.Sprintf("the EHR answered %d", resp.Status)
	}
	if r.outcome != outbox.Sent {
		r.deferred = nil
	}
	return r
}

// searchIDs returns the EHR's ids of typ resources with identifier ident.
func (bt *batch) searchIDs(ctx context.Context, typ, ident string) ([]string, error) {
	found, _, err := bt.w.searchIdentifiers(ctx, typ, []string{ident})
	return found[ident], err
}
