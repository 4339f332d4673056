package engine

import (
	"bytes"
	"context"
	"fmt"
	"net/http"

	"github.com/kapfhir/kapfhir/adapter/ehrclient"
	"github.com/kapfhir/kapfhir/adapter/outbound"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/resource"
)

// maxTransactionEntries bounds a transaction Bundle: a larger batch (a
// patient with years of measurements) is sent in several, in push order.
const maxTransactionEntries = 100

// txRequest is the request line an entry's audit record names: the entry's
// own (no query), and that it travelled in a transaction Bundle.
func txRequest(typ string) string { return "PUT " + typ + " (transaction entry)" }

// txEntry is one item of a transaction Bundle being built.
type txEntry struct {
	it outbox.Item
	ld *loaded
	p  outbound.Prepared
}

// useTransactions reports whether batches go to the EHR as transaction
// Bundles: it advertises the transaction interaction and has not refused
// one as unsupported.
func (w *Worker) useTransactions(caps *ehrclient.Capabilities) bool {
	return caps.Transaction && !w.noTransactions.Load()
}

// transactions writes items as transaction Bundles of conditional updates
// (PUT Type?identifier=system|value). Within a Bundle, references to
// entries the EHR does not hold yet are the entries' urn:uuid fullUrls,
// which the EHR replaces with the ids it assigns: the CarePlan ↔
// Appointment cycle is written in one request, each resource once.
//
// It fills results (recording each write through bt.wrote) and returns the
// items to write one by one: those of a type the EHR cannot update
// conditionally, a Bundle of a single entry, and those of a transaction
// the EHR refused (so that one rejected resource is dead alone and the
// rest are written). halt is set when the batch is to stop here, as the
// one-by-one path stops: credentials refused (stop), the EHR unreachable,
// ctx ended or the lease lost.
func (bt *batch) transactions(ctx context.Context, items []outbox.Item, results map[int64]result) (rest []outbox.Item, stop error, halt bool) {
	var cands []txEntry
	for i, it := range items {
		ld, caps, r, ok, err := bt.ready(ctx, it)
		if err != nil {
			// Met again, and handled, on the one-by-one path.
			for _, c := range cands {
				rest = append(rest, c.it)
			}
			return append(rest, items[i:]...), nil, false
		}
		if !ok {
			results[it.ID] = r
			continue
		}
		rc := caps.Resources[it.ResourceType]
		if !rc.ConditionalUpdate || !caps.Supports(it.ResourceType, "update") {
			rest = append(rest, it)
			continue
		}
		cands = append(cands, txEntry{it: it, ld: ld})
	}
	for start := 0; start < len(cands); start += maxTransactionEntries {
		chunk := cands[start:min(start+maxTransactionEntries, len(cands))]
		refused, err, halted := bt.transaction(ctx, chunk, results)
		rest = append(rest, refused...)
		if halted {
			return rest, err, true
		}
	}
	return rest, nil, false
}

// transaction sends one Bundle of entries (see transactions).
func (bt *batch) transaction(ctx context.Context, chunk []txEntry, results map[int64]result) (refused []outbox.Item, stop error, halt bool) {
	w := bt.w
	// Placeholders for the entries the EHR does not hold yet; the others
	// are referred to by their EHR ids.
	bt.bundled = map[resource.Key]string{}
	defer func() { bt.bundled = nil }()
	for _, c := range chunk {
		k := resource.Key{Type: c.it.ResourceType, ID: c.it.ResourceID}
		if bt.links[k].EHRID == "" {
			bt.bundled[k] = outbound.NewPlaceholder()
		}
	}
	var entries []txEntry
	var bodies []outbound.TxEntry
	for _, c := range chunk {
		it := c.it
		p, r, ok := bt.prepare(it, "", bt.prepFunc(ctx, c.ld))
		r.version = c.ld.v.VersionID
		switch {
		case !ok:
			results[it.ID] = r
			continue
		case len(p.Bundled) == 0 && bytes.Equal(p.Hash, it.SentHash) && it.EHRID != "" && it.SentVersion > 0:
			results[it.ID] = result{outcome: outbox.Unchanged, version: c.ld.v.VersionID, ehrID: it.EHRID, ehrVersion: it.EHRVersion, hash: p.Hash, deferred: p.Deferred}
			continue
		}
		c.p = p
		entries = append(entries, c)
		bodies = append(bodies, outbound.TxEntry{FullURL: bt.bundled[p.Key], Prepared: p})
	}
	switch {
	case len(entries) == 0:
		return nil, nil, false
	case len(entries) == 1 && len(entries[0].p.Bundled) == 0:
		// One request either way: written on its own.
		return []outbox.Item{entries[0].it}, nil, false
	}
	body, err := outbound.Transaction(bodies)
	if err != nil {
		w.log.Error("building a transaction Bundle failed; writing one resource at a time", "patient", bt.b.PatientID, "error", err)
		return items(entries), nil, false
	}
	if !bt.keep() {
		return nil, nil, true
	}
	resp, err := w.o.EHR.Transaction(ctx, body, true)
	if err != nil {
		for _, e := range entries {
			r := bt.wrote(e.it, result{request: txRequest(e.it.ResourceType), version: e.ld.v.VersionID}, err)
			switch {
			case isAuth(err), ctx.Err() != nil:
			default:
				r.outcome, r.errMsg, r.retryAfter = outbox.Retry, err.Error(), w.backoff(e.it.Attempts+1, 0)
				results[e.it.ID] = r
			}
		}
		if isAuth(err) {
			return nil, w.authFailed(ctx, err), true
		}
		if ctx.Err() == nil {
			w.unreachable()
		}
		return nil, nil, true
	}
	w.reachable()
	switch {
	case resp.Status >= 200 && resp.Status < 300:
		bt.applied(ctx, entries, resp, results)
		return nil, nil, false
	case resp.Status >= 400 && resp.Status < 500 && resp.Status != http.StatusTooManyRequests:
		// Refused as a whole (one entry's content, a duplicate, or
		// transactions themselves): nothing was written. Each resource is
		// written on its own, so that the EHR's answer names the one it
		// refuses and the others get through.
		msg := fmt.Sprintf("the EHR refused the transaction (%d); each resource is written on its own", resp.Status)
		for _, e := range entries {
			bt.wrote(e.it, result{outcome: outbox.Retry, status: resp.Status, request: txRequest(e.it.ResourceType), version: e.ld.v.VersionID, errMsg: msg}, nil)
		}
		if resp.Status == http.StatusNotFound || resp.Status == http.StatusMethodNotAllowed {
			w.log.Warn("the EHR refuses transaction Bundles although its CapabilityStatement lists them; writing one resource at a time from now on", "status", resp.Status)
			w.noTransactions.Store(true)
		}
		return items(entries), nil, false
	default:
		// Throttled or failing after the client's retries: the entries
		// retry later, together.
		if resp.Status == http.StatusNotImplemented {
			w.noTransactions.Store(true)
		}
		for _, e := range entries {
			results[e.it.ID] = bt.wrote(e.it, result{
				outcome: outbox.Retry, status: resp.Status, request: txRequest(e.it.ResourceType), version: e.ld.v.VersionID,
				errMsg: fmt.Sprintf("the EHR answered %d to the transaction", resp.Status), opOut: resp.Body, retryAfter: resp.RetryAfter,
			}, nil)
		}
		return nil, nil, false
	}
}

// applied records what a successful transaction wrote: each entry's EHR id
// and version, then the hash of each body as the EHR now holds it (with the
// EHR's ids where the Bundle had placeholders), so that unchanged content
// is recognised and not sent again, by either strategy.
func (bt *batch) applied(ctx context.Context, entries []txEntry, resp *ehrclient.Response, results map[int64]result) {
	types := make([]string, len(entries))
	for i, e := range entries {
		types[i] = e.it.ResourceType
	}
	ers, perr := ehrclient.ParseTransactionResponse(resp.Body, types)
	rs := make([]result, len(entries))
	for i, e := range entries {
		r := result{status: resp.Status, request: txRequest(e.it.ResourceType), version: e.ld.v.VersionID}
		switch {
		case perr != nil:
			// Written, but where is unknown: the retry's conditional
			// update finds each by identifier.
			r.outcome, r.errMsg = outbox.Retry, "the EHR's answer to the transaction could not be read: "+perr.Error()
		case ers[i].ID == "" || ers[i].Status < 200 || ers[i].Status >= 300:
			r.status = ers[i].Status
			r.outcome, r.errMsg = outbox.Retry, fmt.Sprintf("the EHR's answer to the transaction has no id for the %s (status %d)", e.it.ResourceType, ers[i].Status)
		default:
			r.outcome, r.status, r.ehrID, r.ehrVersion = outbox.Sent, ers[i].Status, ers[i].ID, ers[i].VersionID
			r.hash, r.deferred = e.p.Hash, e.p.Deferred
			bt.link(e.p.Key, r)
		}
		rs[i] = r
	}
	bt.bundled = nil
	for i, e := range entries {
		r := rs[i]
		if r.outcome == outbox.Sent && len(e.p.Bundled) > 0 {
			// The body as the EHR holds it: references to its ids.
			p, err := e.ld.parsed.Prepare(bt.w.o.IdentifierSystem, "", bt.resolver(ctx))
			if err == nil && len(p.Bundled) == 0 {
				r.hash = p.Hash
			} else {
				r.hash = nil // unknown: sent again next time, which is safe
			}
		}
		if r.outcome == outbox.Retry {
			r.retryAfter = bt.w.backoff(e.it.Attempts+1, 0)
		}
		results[e.it.ID] = bt.wrote(e.it, r, nil)
	}
}

// prepFunc prepares ld's body with the batch's references.
func (bt *batch) prepFunc(ctx context.Context, ld *loaded) prepFunc {
	return func(ehrID string) (outbound.Prepared, error) {
		if ld.parseErr != nil {
			return outbound.Prepared{}, ld.parseErr
		}
		return ld.parsed.Prepare(bt.w.o.IdentifierSystem, ehrID, bt.resolver(ctx))
	}
}

func items(es []txEntry) []outbox.Item {
	out := make([]outbox.Item, len(es))
	for i, e := range es {
		out[i] = e.it
	}
	return out
}
