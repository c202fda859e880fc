#!/bin/sh
# One-shot bootstrap (signet-tools image, as the server's uid): a join token
# for the agent with a fixed node ID, the server's bundle for the agent to
# verify it with, and the registration entries. Safe to run again.
set -eu
umask 077
admin=/run/signet/admin/admin.sock
out=/run/signet/bootstrap
signet healthcheck --admin-socket "$admin"
signet bundle show --format pem --admin-socket "$admin" > "$out/bundle.pem.tmp"
chmod 0644 "$out/bundle.pem.tmp"
mv "$out/bundle.pem.tmp" "$out/bundle.pem"
# A fresh token on every run: one kept from an earlier run may have expired
# or been used. An agent that already attested resumes with its stored SVID
# and does not use it; unused tokens expire.
token=$(signet token generate --spiffe-id spiffe://example.org/node/compose --ttl 1h \
    --admin-socket "$admin")
token=${token#Token: }
[ -n "$token" ] || { echo "bootstrap: no join token" >&2; exit 1; }
printf '%s\n' "$token" > "$out/join-token.tmp"
mv "$out/join-token.tmp" "$out/join-token"
if [ "$(signet entry count --admin-socket "$admin" | tr -dc 0-9)" = "0" ]; then
    signet entry create --data /etc/signet/entries.json --admin-socket "$admin"
fi
