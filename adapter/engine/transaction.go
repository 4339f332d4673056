package engine

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"slices"

	"github.com/kapfhir/kapfhir/adapter/ehrclient"
	"github.com/kapfhir/kapfhir/adapter/outbound"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/resource"
)

// maxTransactionEntries is the most entries kapfhir puts in a transaction
// Bundle until the EHR shows it takes fewer (see transactions).
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

// Writes is how a worker writes to its EHR, as far as it knows yet.
type Writes struct {
	// Known is false until the worker has read the EHR's CapabilityStatement.
	Known bool
	// Transactions: a patient's batch goes as transaction Bundles.
	Transactions bool
	// MaxEntries is the most entries per Bundle the EHR was seen to take
	// (0: no bound seen).
	MaxEntries int
}

// Writes reports how the worker writes, for operators.
func (w *Worker) Writes() Writes {
	w.mu.Lock()
	caps := w.caps
	w.mu.Unlock()
	if caps == nil {
		return Writes{}
	}
	return Writes{Known: true, Transactions: w.useTransactions(caps), MaxEntries: int(w.txMax.Load())}
}

// txLimit is the most entries a transaction Bundle to this EHR carries.
func (w *Worker) txLimit() int {
	if n := int(w.txMax.Load()); n > 0 {
		return n
	}
	return maxTransactionEntries
}

// txOutcome is what became of one transaction Bundle.
type txOutcome int

const (
	txNone    txOutcome = iota // nothing to send (unchanged, or not preparable)
	txOne                      // a single entry: written on its own instead
	txApplied                  // the EHR applied it
	txRefused                  // the EHR refused it as a whole (4xx)
	txFailed                   // throttled or failing after retries: the entries retry later
	txHalt                     // the batch stops here (see transactions)
)

// transactions writes items as transaction Bundles of conditional updates
// (PUT Type?identifier=system|value). Within a Bundle, references to
// entries the EHR does not hold yet are the entries' urn:uuid fullUrls,
// which the EHR replaces with the ids it assigns: the CarePlan ↔
// Appointment cycle is written in one request, each resource once.
//
// EHRs bound transactions (Medplum takes at most 8 entries when any is a
// conditional update). A Bundle the EHR refuses is split in two and each
// half sent again, down to single resources, which are written on their
// own: so a resource the EHR rejects ends up dead alone, with the EHR's
// OperationOutcome, and the rest is written. When halves went through
// where the whole did not (and nothing was rejected on its own), the EHR's
// bound is learned and later batches keep under it. A resource written
// with references dropped to entries of a later Bundle (the CarePlan, when
// its Appointments take several Bundles) travels again in the next Bundle,
// where they resolve.
//
// It fills results (recording each write through bt.wrote) and returns the
// items to write one by one: those of a type the EHR cannot update
// conditionally, single resources, and all of them when the EHR refuses
// transactions as unsupported. halt is set when the batch is to stop
// here, as the one-by-one path stops: credentials refused (stop), the EHR
// unreachable, ctx ended or the lease lost.
func (bt *batch) transactions(ctx context.Context, items []outbox.Item, results map[int64]result) (rest []outbox.Item, stop error, halt bool) {
	if pk := (resource.Key{Type: "Patient", ID: bt.b.PatientID}); bt.patientErr != "" && bt.w.ep.CreatePatients && bt.queue[pk] {
		// kapfhir creates the patient: it is an entry of the Bundle, which
		// the others refer to by its placeholder.
		bt.patientErr = ""
	}
	var pending []txEntry
	for i, it := range items {
		ld, caps, r, ok, err := bt.ready(ctx, it)
		if err != nil {
			// Met again, and handled, on the one-by-one path.
			for _, c := range pending {
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
		pending = append(pending, txEntry{it: it, ld: ld})
	}
	limit := bt.w.txLimit()
	var carry []txEntry
	refusedMin, appliedMax, alone := 0, 0, false
	for len(pending) > 0 {
		if len(carry) >= limit {
			carry = nil // written again one by one (push's second pass)
		}
		n := min(limit-len(carry), len(pending))
		chunk := append(carry, pending[:n]...)
		pending, carry = pending[n:], nil
		sent, out, err := bt.transaction(ctx, chunk, results)
		switch out {
		case txHalt:
			return rest, err, true
		case txOne:
			rest = append(rest, sent[0].it)
		case txApplied:
			appliedMax = max(appliedMax, len(sent))
			carry = bt.carried(sent, pending, results)
		case txRefused:
			if bt.w.noTransactions.Load() {
				for _, e := range append(sent, pending...) {
					rest = append(rest, e.it)
				}
				return rest, nil, false
			}
			if refusedMin == 0 || len(sent) < refusedMin {
				refusedMin = len(sent)
			}
			if len(sent) <= 2 {
				// Halves of one: each written on its own.
				alone = true
				for _, e := range sent {
					rest = append(rest, e.it)
				}
				continue
			}
			limit = (len(sent) + 1) / 2
			pending = append(slices.Clone(sent), pending...)
		}
	}
	if refusedMin > 0 && !alone && appliedMax > 0 && appliedMax < refusedMin && bt.w.lowerTxLimit(appliedMax) {
		bt.w.log.Info("the EHR refuses larger transaction Bundles; sending at most this many entries", "entries", appliedMax)
	}
	return rest, nil, false
}

// lowerTxLimit sets the transaction bound to n if that lowers it (lanes
// learn concurrently; the bound only goes down) and reports whether it did.
func (w *Worker) lowerTxLimit(n int) bool {
	for {
		cur := w.txMax.Load()
		if cur > 0 && int64(n) >= cur {
			return false
		}
		if w.txMax.CompareAndSwap(cur, int64(n)) {
			return true
		}
	}
}

// carried returns the entries of an applied Bundle that were written
// without references to entries still pending: they go in the next Bundle
// again, where those references resolve.
func (bt *batch) carried(sent, pending []txEntry, results map[int64]result) []txEntry {
	later := map[resource.Key]bool{}
	for _, e := range pending {
		later[resource.Key{Type: e.it.ResourceType, ID: e.it.ResourceID}] = true
	}
	var out []txEntry
	for _, e := range sent {
		r := results[e.it.ID]
		if r.outcome == outbox.Sent && slices.ContainsFunc(r.deferred, func(k resource.Key) bool { return later[k] }) {
			out = append(out, txEntry{it: e.it, ld: e.ld})
		}
	}
	return out
}

// transaction prepares chunk and sends what needs sending as one Bundle
// (see transactions); sent are the entries it put in the Bundle.
func (bt *batch) transaction(ctx context.Context, chunk []txEntry, results map[int64]result) (sent []txEntry, out txOutcome, stop error) {
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
	var bodies []outbound.TxEntry
	for {
		sent, bodies = nil, nil
		var unsendable []resource.Key
		for _, c := range chunk {
			it := c.it
			k := resource.Key{Type: it.ResourceType, ID: it.ResourceID}
			p, r, ok := bt.prepare(it, "", bt.prepFunc(ctx, c.ld))
			r.version = c.ld.v.VersionID
			l := bt.links[k]
			switch {
			case !ok:
				results[it.ID] = r
				if _, ok := bt.bundled[k]; ok {
					unsendable = append(unsendable, k)
				}
				continue
			case len(p.Bundled) == 0 && l.EHRID != "" && bytes.Equal(p.Hash, l.SentHash) && l.SentVersion > 0:
				results[it.ID] = result{outcome: outbox.Unchanged, version: c.ld.v.VersionID, ehrID: l.EHRID, ehrVersion: l.EHRVersion, hash: p.Hash, deferred: p.Deferred}
				continue
			}
			c.p = p
			sent = append(sent, c)
			bodies = append(bodies, outbound.TxEntry{FullURL: bt.bundled[k], Prepared: p})
		}
		if len(unsendable) == 0 {
			break
		}
		// An entry that cannot be sent has no placeholder to refer to:
		// prepared again, the others drop (and defer) those references.
		for _, k := range unsendable {
			delete(bt.bundled, k)
		}
	}
	switch {
	case len(sent) == 0:
		return nil, txNone, nil
	case len(sent) == 1 && len(sent[0].p.Bundled) == 0:
		// One request either way: written on its own.
		return sent, txOne, nil
	}
	body, err := outbound.Transaction(bodies)
	if err != nil {
		w.log.Error("building a transaction Bundle failed; writing one resource at a time", "patient", bt.b.PatientID, "error", err)
		w.noTransactions.Store(true)
		return sent, txRefused, nil
	}
	if !bt.keep() {
		return sent, txHalt, nil
	}
	resp, err := w.o.EHR.Transaction(ctx, body, true)
	if err != nil {
		for _, e := range sent {
			r := bt.wrote(e.it, result{request: txRequest(e.it.ResourceType), version: e.ld.v.VersionID}, err)
			if !isAuth(err) && ctx.Err() == nil {
				r.outcome, r.errMsg, r.retryAfter = outbox.Retry, err.Error(), w.backoff(e.it.Attempts+1, 0)
				results[e.it.ID] = r
			}
		}
		if isAuth(err) {
			return sent, txHalt, w.authFailed(ctx, err)
		}
		if ctx.Err() == nil {
			w.unreachable()
		}
		return sent, txHalt, nil
	}
	w.reachable()
	switch {
	case resp.Status >= 200 && resp.Status < 300:
		bt.applied(ctx, sent, resp, results)
		return sent, txApplied, nil
	case resp.Status >= 400 && resp.Status < 500 && resp.Status != http.StatusTooManyRequests:
		// Refused as a whole (an entry's content, a duplicate, too many
		// entries, or transactions themselves): nothing was written.
		msg := fmt.Sprintf("the EHR refused a transaction of %d entries (%d); sent again in smaller ones", len(sent), resp.Status)
		if resp.Status == http.StatusNotFound || resp.Status == http.StatusMethodNotAllowed {
			w.log.Warn("the EHR refuses transaction Bundles although its CapabilityStatement lists them; writing one resource at a time from now on", "status", resp.Status)
			w.noTransactions.Store(true)
			msg = fmt.Sprintf("the EHR refused the transaction (%d); each resource is written on its own", resp.Status)
		}
		for _, e := range sent {
			bt.wrote(e.it, result{outcome: outbox.Retry, status: resp.Status, request: txRequest(e.it.ResourceType), version: e.ld.v.VersionID, errMsg: msg}, nil)
		}
		return sent, txRefused, nil
	default:
		// Throttled or failing after the client's retries: the entries
		// retry later, together.
		if resp.Status == http.StatusNotImplemented {
			w.noTransactions.Store(true)
		}
		for _, e := range sent {
			results[e.it.ID] = bt.wrote(e.it, result{
				outcome: outbox.Retry, status: resp.Status, request: txRequest(e.it.ResourceType), version: e.ld.v.VersionID,
				errMsg: fmt.Sprintf("the EHR answered %d to the transaction", resp.Status), opOut: resp.Body, retryAfter: resp.RetryAfter,
			}, nil)
		}
		return sent, txFailed, nil
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
	if perr != nil {
		// Applied, but the answer does not say where: each entry is found
		// by its identifier below.
		ers = make([]ehrclient.EntryResponse, len(entries))
		for i := range ers {
			ers[i].Status = resp.Status
		}
	}
	bt.findUnnamed(ctx, entries, ers)
	rs := make([]result, len(entries))
	for i, e := range entries {
		r := result{status: ers[i].Status, request: txRequest(e.it.ResourceType), version: e.ld.v.VersionID}
		switch {
		case ers[i].Status < 200 || ers[i].Status >= 300:
			r.outcome, r.errMsg = outbox.Retry, fmt.Sprintf("the EHR answered %d to the %s's entry of an applied transaction", ers[i].Status, e.it.ResourceType)
		case ers[i].ID == "":
			// Written, but where is unknown: the retry's conditional
			// update finds it by identifier.
			r.outcome, r.errMsg = outbox.Retry, fmt.Sprintf("the EHR's answer to the transaction does not say where the %s is, nor does a search by its identifier", e.it.ResourceType)
		default:
			r.outcome, r.ehrID, r.ehrVersion = outbox.Sent, ers[i].ID, ers[i].VersionID
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

// findUnnamed fills in the EHR ids of the applied entries whose answer
// names none (no location, no resource: FHIR makes the location optional)
// by searching for them by kapfhir's identifier, one search per type. An
// identifier found other than exactly once is left unnamed.
func (bt *batch) findUnnamed(ctx context.Context, entries []txEntry, ers []ehrclient.EntryResponse) {
	byType := map[string][]int{}
	for i, er := range ers {
		if er.ID == "" && er.Status >= 200 && er.Status < 300 {
			byType[entries[i].it.ResourceType] = append(byType[entries[i].it.ResourceType], i)
		}
	}
	for typ, idx := range byType {
		idents := make([]string, len(idx))
		for j, i := range idx {
			idents[j] = entries[i].p.Identifier
		}
		found, _, err := bt.w.searchIdentifiers(ctx, typ, idents)
		if err != nil {
			bt.w.log.Warn("finding what a transaction wrote by identifier failed; the entries are sent again", "type", typ, "error", err)
			continue
		}
		for j, i := range idx {
			if ids := found[idents[j]]; len(ids) == 1 {
				ers[i].ID = ids[0]
			}
		}
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
