// Command kapfhir maps ketamine and KAP clinic programmes to FHIR R4 and
// serves them. See README.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.LookupEnv)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kapfhir:", err)
		os.Exit(1)
	}
}
