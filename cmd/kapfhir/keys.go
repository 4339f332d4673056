package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/kapfhir/kapfhir/access"
	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/config"
)

// keysCmd rotates or lists kapfhir's own token-signing keys (sub is
// "rotate" or "list").
func keysCmd(ctx context.Context, cfg config.Config, log *slog.Logger, sub string, stdout io.Writer) error {
	svc, st, err := newService(ctx, cfg, log, nil)
	if err != nil {
		return err
	}
	defer st.Close()
	acc, _, err := openAccess(ctx, cfg, st, issuerOf(cfg, cfg.Listen), svc, log)
	if err != nil {
		return err
	}
	if sub == "rotate" {
		k, err := acc.RotateKey(ctx, audit.Agent{ClientID: "cli", Role: "admin"})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "rotated: key %s signs from now on. Running kapfhir processes verify its tokens at once and sign with it\n"+
			"from their next key reload (within %s); the keys it replaces verify until their tokens have expired.\n\n", k.KID, access.DefaultReloadInterval)
	}
	keys, err := acc.Keys(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KID\tCREATED\tSTATE\tSTORED")
	for _, k := range keys {
		state := "verifies until " + stamp(k.RetireAt)
		switch {
		case k.Signing:
			state = "signs"
		case !k.Retired.IsZero():
			state = "retired " + stamp(k.Retired)
		}
		stored := "plaintext"
		if k.Sealed {
			stored = "sealed"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.KID, stamp(k.Created), state, stored)
	}
	return tw.Flush()
}

// stamp writes a time for the key listing: UTC, to the second.
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
