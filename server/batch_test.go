package server

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/kapfhir/kapfhir/audit"
)

// slowRecorder holds its first append until released and counts appends.
type slowRecorder struct {
	release chan struct{}
	mu      sync.Mutex
	calls   [][]string
}

func (s *slowRecorder) AppendAudit(_ context.Context, recs ...audit.Record) ([]audit.Record, error) {
	s.mu.Lock()
	first := len(s.calls) == 0
	var ids []string
	for _, r := range recs {
		ids = append(ids, r.Agent.ClientID)
	}
	s.calls = append(s.calls, ids)
	s.mu.Unlock()
	if first {
		<-s.release
	}
	return recs, nil
}

// Records that queue while an append runs go in the next append together,
// and every caller returns only once its record is appended.
func TestBatcherGroupsWaitingRecords(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &slowRecorder{release: make(chan struct{})}
		b := &batcher{rec: rec}
		var wg sync.WaitGroup
		done := make(chan string, 11)
		appendOne := func(id string) {
			defer wg.Done()
			if _, err := b.AppendAudit(t.Context(), audit.Record{Agent: audit.Agent{ClientID: id}}); err != nil {
				t.Error(err)
			}
			done <- id
		}
		wg.Add(1)
		go appendOne("first")
		synctest.Wait() // the first append is running, held
		for i := range 10 {
			wg.Add(1)
			go appendOne(fmt.Sprint(i))
		}
		synctest.Wait()
		if len(done) != 0 {
			t.Fatal("a caller returned before its record was appended")
		}
		close(rec.release)
		wg.Wait()
		synctest.Wait() // the flusher finds the queue empty and ends
		rec.mu.Lock()
		defer rec.mu.Unlock()
		b.mu.Lock()
		defer b.mu.Unlock()
		if len(rec.calls) != 2 || len(rec.calls[1]) != 10 {
			t.Errorf("appends: %v, want the first alone, then the ten waiting together", rec.calls)
		}
		if b.flushing || len(b.queue) != 0 {
			t.Error("the flusher did not stop with an empty queue")
		}
	})
}
