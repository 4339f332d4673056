package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/kapfhir/kapfhir/config"
	"github.com/kapfhir/kapfhir/seal"
)

// sealKeyFile is where kapfhir keeps the sealing key it generates, in the
// data directory, when none is configured.
const sealKeyFile = "seal.key"

// openSeal returns the Box that seals secrets kept in the store: with the
// configured key (secrets.keyFile or KAPFHIR_SEAL_KEY), else with the key
// kept in the data directory, generated there on first start.
func openSeal(cfg config.Config, log *slog.Logger) (*seal.Box, error) {
	key, err := cfg.Secrets.SealKey()
	if err != nil {
		return nil, err
	}
	if key == nil {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("data directory: %w", err)
		}
		path := filepath.Join(cfg.DataDir, sealKeyFile)
		var created bool
		if key, created, err = seal.LoadOrCreateKeyFile(path); err != nil {
			return nil, err
		}
		if created {
			log.Info("generated the key that seals secrets in the store; back it up, and better keep it apart from the database "+
				"(secrets.keyFile or KAPFHIR_SEAL_KEY; every process sharing a database needs the same key)",
				"file", path, "key", seal.KeyID(key))
		}
	}
	return seal.New(key)
}

// serverTLS is the HTTPS configuration: the configured certificate, TLS 1.2
// or later (Go's default cipher suites), HTTP/2 offered.
func serverTLS(t config.TLS) (*tls.Config, error) {
	cert, err := t.Certificate()
	if err != nil {
		return nil, fmt.Errorf("tls.certFile, tls.keyFile: %w", err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"h2", "http/1.1"},
	}, nil
}
