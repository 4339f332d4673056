// Package bench measures kapfhir's FHIR read path against a baseline in the
// same run: GET /fhir/CarePlan/{id} from a store of 100k resources versus an
// Echo handler returning the same bytes from memory.
//
//	go test ./test/bench -run '^$' -bench . -benchtime 20000x
package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/kapfhir/kapfhir/auth"
	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/test/kaptest"
)

// storeSize is the number of resources in the benchmark store.
const storeSize = 100_000

// fill adds copies of a real CarePlan (id tmplID) under new ids (and a patient reference
// each, so the search index is populated) until the store holds n resources.
func fill(b *testing.B, st store.Store, tmpl []byte, tmplID string, n int) {
	b.Helper()
	ctx := context.Background()
	const batch = 5000
	for i := 0; i < n; i += batch {
		err := st.InTx(ctx, func(tx store.Tx) error {
			for j := i; j < min(i+batch, n); j++ {
				id := fmt.Sprintf("bulk-%06d", j)
				body := bytes.Replace(tmpl, []byte(`"id":"`+tmplID+`"`), []byte(`"id":"`+id+`"`), 1)
				w := resource.Write{
					Version: resource.Version{Type: "CarePlan", ID: id, VersionID: 1, LastUpdated: kaptest.Start, JSON: body},
					Hash:    []byte(id),
					Index: resource.Index{
						Refs:     []resource.Ref{{Param: "patient", Target: fmt.Sprintf("Patient/bulk-%d", j%5000)}},
						Tokens:   []resource.Token{{Param: "status", System: "http://hl7.org/fhir/request-status", Code: "active"}},
						SortDate: kaptest.Start.Add(time.Duration(j) * time.Minute),
					},
				}
				if err := tx.PutVersion(ctx, w); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// get fetches url and returns the body, or an error for a transport failure
// or a status other than 200. It does not call b.Fatal, so it is safe inside
// RunParallel.
func get(c *http.Client, url string) ([]byte, error) {
	res, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		return nil, err
	}
	if res.StatusCode != 200 {
		return nil, fmt.Errorf("GET %s = %d", url, res.StatusCode)
	}
	return body, nil
}

func BenchmarkCarePlanRead(b *testing.B) {
	env := kaptest.New(b, 0)
	ctx := context.Background()
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	clinic := &http.Client{Transport: kaptest.WithToken(env.Token(b, auth.RoleClinic), tr)}
	// The EHR reads (an ehr client's token, verified and cached as for any caller).
	c := &http.Client{Transport: kaptest.WithToken(env.Token(b, auth.RoleEHR), tr)}

	post := func(path, body string) string {
		res, err := clinic.Post(env.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		out, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 201 {
			b.Fatalf("POST %s = %d: %s", path, res.StatusCode, out)
		}
		i := bytes.Index(out, []byte(`"id":"`))
		return string(out[i+6 : i+6+bytes.IndexByte(out[i+6:], '"')])
	}
	pat := post("/api/v1/patients", `{"identifier":[{"system":"https://clinic.example/mrn","value":"B1"}],"name":{"family":"Bench"},"birthDate":"1980-01-01","gender":"other"}`)
	post("/api/v1/programs", `{"patientId":"`+pat+`","protocolId":"ketamine-iv-6x-3wk","start":"2026-12-01T09:00"}`)
	page, err := env.Store.Search(ctx, resource.Query{Type: "CarePlan", Count: 1, Sort: resource.SortID})
	if err != nil || len(page.Versions) != 1 {
		b.Fatalf("no CarePlan: %v", err)
	}
	cp := page.Versions[0]
	fill(b, env.Store, cp.JSON, cp.ID, storeSize)

	url := env.URL + "/fhir/CarePlan/" + cp.ID
	want, err := get(c, url)
	if err != nil {
		b.Fatal(err)
	}

	static := echo.New()
	static.GET("/fhir/CarePlan/:id", func(e echo.Context) error {
		e.Response().Header().Set("ETag", `W/"1"`)
		return e.Blob(http.StatusOK, "application/fhir+json; charset=utf-8", want)
	})
	ss := httptest.NewServer(static)
	defer ss.Close()

	// Each case reads the same CarePlan bytes (or, for -spread, one of the
	// bulk copies of it, spread over the whole store), so all serve the same
	// size of body.
	var next atomic.Int64
	one := func(string) string { return url }
	spread := func(string) string {
		return fmt.Sprintf("%s/fhir/CarePlan/bulk-%06d", env.URL, (next.Add(7919))%storeSize)
	}
	staticURL := func(string) string { return ss.URL + "/fhir/CarePlan/" + cp.ID }
	for _, bm := range []struct {
		name string
		url  func(string) string
	}{
		{"fhir-read-100k", one},
		{"fhir-read-100k-spread", spread},
		{"echo-static", staticURL},
	} {
		b.Run(bm.name, func(b *testing.B) {
			b.SetBytes(int64(len(want)))
			b.ReportAllocs()
			b.SetParallelism(16) // many EHR clients at once, for every case alike
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					got, err := get(c, bm.url(""))
					if err != nil {
						b.Error(err)
						return
					}
					if d := len(got) - len(want); d < -64 || d > 64 {
						b.Errorf("got %d bytes, want about %d", len(got), len(want))
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		})
	}
}
