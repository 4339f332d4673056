package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/kapfhir/kapfhir/access"
	"github.com/kapfhir/kapfhir/config"
)

// keysCmd rotates or lists kapfhir's own token-signing keys (sub is
// "rotate" or "list").
func keysCmd(ctx context.Context, cfg config.Config, log *slog.Logger, sub string, stdout io.Writer) error {
	return withAccess(ctx, cfg, log, func(acc *access.Service) error {
		if sub == "rotate" {
			k, err := acc.RotateKey(ctx, cliAgent)
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
		tw := newTable(stdout, "KID", "CREATED", "STATE", "STORED")
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
			tw.row(k.KID, stamp(k.Created), state, stored)
		}
		return tw.flush()
	})
}

// stamp writes a time for the key listing: UTC, to the second.
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
