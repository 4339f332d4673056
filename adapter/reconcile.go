package adapter

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/kapfhir/kapfhir/adapter/ehrclient"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/treatment"
)

// Finding kinds of a reconciliation.
const (
	// Missing: kapfhir sent it, the EHR has no resource with its identifier
	// (deleted in the EHR, or lost).
	Missing = "missing"
	// Drifted: the EHR's copy changed since kapfhir wrote it (another
	// versionId, or another resource id).
	Drifted = "drifted"
	// Duplicated: the EHR holds several resources with one identifier.
	Duplicated = "duplicated"
	// Unknown: the EHR holds a resource with kapfhir's identifier system
	// that kapfhir has no record of sending.
	Unknown = "unknown"
)

// Finding is one difference between the EHR and the crosswalk.
type Finding struct {
	Kind         string   `json:"kind"`
	ResourceType string   `json:"resourceType"`
	ResourceID   string   `json:"resourceId"`
	ItemID       int64    `json:"itemId,omitempty"`
	EHRIDs       []string `json:"ehrIds,omitempty"`
	Detail       string   `json:"detail"`
}

// Reconciliation is the result of comparing an EHR with the crosswalk.
type Reconciliation struct {
	Endpoint string    `json:"endpoint"`
	Checked  int       `json:"checked"`
	Findings []Finding `json:"findings"`
	// Repaired counts the items queued again (missing and drifted ones).
	Repaired int `json:"repaired"`
}

type ehrCopy struct{ id, version string }

// Reconcile compares, by kapfhir's identifier, what the EHR holds with what
// the crosswalk says kapfhir sent: missing, drifted, duplicated and unknown
// resources. With repair, missing and drifted items are replayed (sent
// again, whatever their hash); duplicates are only reported.
func (m *Manager) Reconcile(ctx context.Context, id string, repair bool, actor string) (Reconciliation, error) {
	st, err := m.o.Store.Endpoint(ctx, id)
	if err != nil {
		return Reconciliation{}, err
	}
	c, err := ehrclient.New(st.Endpoint, m.clientOptions())
	if err != nil {
		return Reconciliation{}, err
	}
	rec := Reconciliation{Endpoint: id, Findings: []Finding{}}
	for _, typ := range st.ResourceTypes {
		copies, err := m.ehrCopies(ctx, c, typ)
		if err != nil {
			return rec, err
		}
		seen := map[string]bool{}
		for after := int64(0); ; {
			items, err := m.o.Store.Items(ctx, outbox.Filter{EndpointID: id, AfterID: after, Limit: 1000})
			if err != nil {
				return rec, err
			}
			for _, it := range items {
				if it.ResourceType != typ {
					continue
				}
				seen[it.ResourceID] = true
				if it.SentVersion == 0 {
					continue // never sent: nothing to compare yet
				}
				rec.Checked++
				got := copies[it.ResourceID]
				f := Finding{ResourceType: typ, ResourceID: it.ResourceID, ItemID: it.ID}
				for _, cp := range got {
					f.EHRIDs = append(f.EHRIDs, cp.id)
				}
				switch {
				case len(got) == 0:
					f.Kind, f.Detail = Missing, "kapfhir sent it (as "+it.EHRID+"), the EHR no longer holds it"
				case len(got) > 1:
					f.Kind, f.Detail = Duplicated, fmt.Sprintf("the EHR holds %d copies; merge them in the EHR, then replay", len(got))
				case got[0].id != it.EHRID:
					f.Kind, f.Detail = Drifted, "the EHR holds it under another id ("+got[0].id+", kapfhir wrote "+it.EHRID+")"
				case it.EHRVersion != "" && got[0].version != "" && got[0].version != it.EHRVersion:
					f.Kind, f.Detail = Drifted, "changed in the EHR since kapfhir wrote it (versionId "+got[0].version+", kapfhir wrote "+it.EHRVersion+")"
				default:
					continue
				}
				if repair && (f.Kind == Missing || f.Kind == Drifted) && it.State != outbox.InFlight {
					if err := m.o.Store.Replay(ctx, it.ID, actor, m.o.Now().UTC()); err != nil {
						return rec, err
					}
					rec.Repaired++
				}
				rec.Findings = append(rec.Findings, f)
			}
			if len(items) < 1000 {
				break
			}
			after = items[len(items)-1].ID
		}
		ids := make([]string, 0, len(copies))
		for rid := range copies {
			if !seen[rid] {
				ids = append(ids, rid)
			}
		}
		slices.Sort(ids)
		for _, rid := range ids {
			f := Finding{Kind: Unknown, ResourceType: typ, ResourceID: rid, Detail: "the EHR holds it with kapfhir's identifier, but kapfhir has no record of sending it"}
			for _, cp := range copies[rid] {
				f.EHRIDs = append(f.EHRIDs, cp.id)
			}
			rec.Findings = append(rec.Findings, f)
		}
	}
	if rec.Repaired > 0 {
		m.Notify()
	}
	return rec, nil
}

// ehrCopies reads every resource of typ with kapfhir's identifier system
// from the EHR, keyed by kapfhir's id.
func (m *Manager) ehrCopies(ctx context.Context, c *ehrclient.Client, typ string) (map[string][]ehrCopy, error) {
	out := map[string][]ehrCopy{}
	path := typ + "?" + url.Values{"identifier": {m.o.IdentifierSystem + "|"}, "_count": {"1000"}}.Encode()
	for pages := 0; path != ""; pages++ {
		if pages > 10000 {
			return nil, treatment.Errorf(treatment.KindUnavailable, "reconcile: the EHR's %s search does not end", typ)
		}
		resp, err := c.Do(ctx, ehrclient.Request{Method: http.MethodGet, Path: path, Idempotent: true})
		if err != nil {
			return nil, err
		}
		if resp.Status != http.StatusOK {
			return nil, treatment.Errorf(treatment.KindUnavailable, "reconcile: searching %s answered %d", typ, resp.Status)
		}
		page, err := ehrclient.ParsePage(resp.Body)
		if err != nil {
			return nil, &treatment.Error{Kind: treatment.KindUnavailable, Msg: "reconcile: the EHR's " + typ + " search is not a Bundle", Err: err}
		}
		prefix := m.o.IdentifierSystem + "|"
		for _, e := range page.Entries {
			if !e.Match || e.ResourceType != typ {
				continue
			}
			for _, ident := range e.Identifiers {
				if v, ok := strings.CutPrefix(ident, prefix); ok {
					out[v] = append(out[v], ehrCopy{id: e.ID, version: e.VersionID})
				}
			}
		}
		path = page.Next
	}
	return out, nil
}
