#!/bin/sh
# One-shot bootstrap (signet-tools image, as the server's uid): a join token
# for the agent with a fixed node ID, the server's bundle for the agent to
# verify it with, and the registration entries. Safe to run again.
set -eu
admin=/run/signet/admin/admin.sock
out=/run/signet/bootstrap
signet healthcheck --socket "$admin"
signet bundle show --format pem --socket "$admin" > "$out/bundle.pem.tmp"
mv "$out/bundle.pem.tmp" "$out/bundle.pem"
if [ ! -s "$out/join-token" ]; then
    signet token generate --spiffe-id spiffe://example.org/node/compose --ttl 1h \
        --socket "$admin" | sed 's/^Token: //' > "$out/join-token.tmp"
    mv "$out/join-token.tmp" "$out/join-token"
fi
if [ "$(signet entry count --socket "$admin" | tr -dc 0-9)" = "0" ]; then
    signet entry create --data /etc/signet/entries.json --socket "$admin"
fi
chmod 0644 "$out/bundle.pem"
chmod 0600 "$out/join-token"
