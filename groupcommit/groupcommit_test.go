package groupcommit_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/kapfhir/kapfhir/groupcommit"
)

// store holds its first flush until released, records every flush, and
// fails the items named "bad" (one error each) or the whole of a flush
// holding "down".
type store struct {
	release chan struct{}
	mu      sync.Mutex
	flushes [][]string
}

func (s *store) flush(_ context.Context, items []string) ([]error, error) {
	s.mu.Lock()
	first := len(s.flushes) == 0
	s.flushes = append(s.flushes, slices.Clone(items))
	s.mu.Unlock()
	if first {
		<-s.release
	}
	if slices.Contains(items, "down") {
		return nil, errors.New("store down")
	}
	errs := make([]error, len(items))
	for i, it := range items {
		if it == "bad" {
			errs[i] = errors.New("bad item")
		}
	}
	return errs, nil
}

// Items that queue while a flush runs go in the next flush together (at
// most max at once), every caller returns only once its own items are
// written, with its own errors, and the flusher stops when idle.
func TestGroupsWaitingItems(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := &store{release: make(chan struct{})}
		b := groupcommit.New(8, st.flush)
		var wg sync.WaitGroup
		got := map[string][]error{}
		var mu sync.Mutex
		do := func(items ...string) {
			defer wg.Done()
			errs := b.Do(t.Context(), items...)
			mu.Lock()
			got[items[0]] = errs
			mu.Unlock()
		}
		wg.Add(1)
		go do("first")
		synctest.Wait() // the first flush is running, held
		for i := range 10 {
			wg.Add(1)
			go do(fmt.Sprint(i))
		}
		wg.Add(1)
		go do("bad", "good")
		synctest.Wait()
		mu.Lock()
		if len(got) != 0 {
			t.Fatal("a caller returned before its items were written")
		}
		mu.Unlock()
		close(st.release)
		wg.Wait()
		st.mu.Lock()
		defer st.mu.Unlock()
		if len(st.flushes) != 3 || len(st.flushes[0]) != 1 || len(st.flushes[1]) != 8 || len(st.flushes[2]) != 4 {
			t.Errorf("flushes: %v, want the first alone, then the 12 waiting in 8 and 4", st.flushes)
		}
		if errs := got["bad"]; len(errs) != 2 || errs[0] == nil || errs[1] != nil {
			t.Errorf(`Do("bad", "good") = %v, want an error for the first only`, errs)
		}
		if errs := got["3"]; len(errs) != 1 || errs[0] != nil {
			t.Errorf(`Do("3") = %v, want no error`, errs)
		}
	})
}

// A flush's error for all its items reaches every caller in it.
func TestWholeFlushError(t *testing.T) {
	st := &store{release: make(chan struct{})}
	close(st.release)
	b := groupcommit.New(8, st.flush)
	if errs := b.Do(t.Context(), "down", "x"); len(errs) != 2 || errs[0] == nil || errs[1] == nil {
		t.Errorf(`Do("down", "x") = %v, want the flush's error for both`, errs)
	}
	if errs := b.Do(t.Context(), "fine"); errs[0] != nil {
		t.Errorf("after a failed flush: %v", errs)
	}
}
