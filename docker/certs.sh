#!/bin/sh
# Run once by compose.yaml's `certs` service: a private CA and server certificates for the
# `rabbitmq` and `postgres` services, into the `certs` volume every service mounts at /certs.
# Keep them if they exist (restarts must not rotate the CA under running clients). In
# production, replace this with your own CA or your platform's (a managed broker or database
# already has one: give drover its CA file, or none for a public one).
set -eu
cd /certs
if [ -s ca.crt ] && [ -s rabbitmq.key ] && [ -s postgres.key ]; then
  echo "certificates already in /certs"
  exit 0
fi
apk add --no-cache openssl >/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=drover compose CA" \
  -keyout ca.key -out ca.crt 2>/dev/null
for host in rabbitmq postgres; do
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$host" -keyout "$host.key" -out "$host.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$host" > "$host.ext"
  openssl x509 -req -in "$host.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile "$host.ext" -out "$host.crt" 2>/dev/null
  rm -f "$host.csr" "$host.ext"
done
rm -f ca.srl
# Each server reads its own key and refuses (PostgreSQL) one others can read: the official
# images run RabbitMQ as uid 999 and PostgreSQL as uid 999 too.
chown 999:999 rabbitmq.key postgres.key
chmod 600 rabbitmq.key postgres.key ca.key
chmod 644 ca.crt rabbitmq.crt postgres.crt
echo "certificates written to /certs"
