#!/usr/bin/env bash
# Usage: make_test_certs.sh DIR   (the certificates of the SDK's HTTPS tests, made with the openssl CLI)
# In DIR: ca.crt (the test CA the client is given as ca_file) and, each as NAME.crt + NAME.key, server
# certificates for ingest-api:
#   good       signed by the test CA, for 127.0.0.1 and localhost, valid now
#   expired    the same names and CA, valid only in January 2020
#   wronghost  signed by the test CA, valid now, for wrong.example only
#   unknownca  for 127.0.0.1 and localhost, valid now, signed by another CA the client does not know
# EC P-256 keys (PKCS#8 PEM); loopback names only.
set -euo pipefail
dir=$1
mkdir -p "$dir"
cd "$dir"

newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)

make_ca() { # NAME CN
  openssl req -x509 "${newkey[@]}" -keyout "$1.key" -out "$1.crt" -days 2 -subj "/CN=$2" 2>/dev/null
  mkdir -p "$1.db"
  : >"$1.db/index.txt"
  echo 1000 >"$1.db/serial"
  cat >"$1.cnf" <<CNF
[ca]
default_ca = this
[this]
database = $1.db/index.txt
new_certs_dir = $1.db
serial = $1.db/serial
default_md = sha256
policy = any
unique_subject = no
[any]
commonName = supplied
CNF
}

leaf() { # NAME CA SAN DATES...: a server certificate (openssl ca takes fixed dates, x509 -days does not go back)
  local name=$1 ca=$2 san=$3
  shift 3
  openssl req "${newkey[@]}" -keyout "$name.key" -out "$name.csr" -subj "/CN=$name" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' \
    "$san" >"$name.ext"
  openssl ca -batch -notext -config "$ca.cnf" -cert "$ca.crt" -keyfile "$ca.key" -in "$name.csr" \
    -out "$name.crt" -extfile "$name.ext" "$@" 2>/dev/null
}

make_ca ca "EventTracker SDK test CA"
make_ca otherca "A CA the client does not know"
loopback="IP:127.0.0.1,DNS:localhost"
leaf good ca "$loopback" -days 2
leaf expired ca "$loopback" -startdate 20200101000000Z -enddate 20200131000000Z
leaf wronghost ca "DNS:wrong.example" -days 2
leaf unknownca otherca "$loopback" -days 2
