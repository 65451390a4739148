#!/bin/sh
# tls_certs.sh DIR: makes the TLS tests' certificates in DIR with openssl:
# ca (the CA the tests trust), other (a CA nobody trusts), server (for
# 127.0.0.1 and localhost, signed by ca), client (a client certificate
# signed by ca), rogue (for 127.0.0.1, signed by other); each NAME.crt with
# NAME.key. EC P-256 keys, valid for 2 days. Exits non-zero on failure.
# The server's names list 127.0.0.1 as a DNS name as well as an IP
# address: mbedTLS 2.28 matches a server name against DNS names only.
set -eu
cd "$1"
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"

ca() {
	openssl req -x509 $ec -keyout "$1.key" -out "$1.crt" -days 2 \
		-subj "/CN=$2" \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

cert() { # name, signing ca, common name, extensions
	openssl req -new $ec -keyout "$1.key" -out "$1.csr" -subj "/CN=$3" \
		2>/dev/null
	printf '%s\n' "$4" >"$1.ext"
	openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" \
		-CAcreateserial -out "$1.crt" -days 2 -extfile "$1.ext" \
		2>/dev/null
}

ca ca "qpipe test CA"
ca other "qpipe untrusted CA"
cert server ca 127.0.0.1 "subjectAltName=IP:127.0.0.1,DNS:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
cert client ca "qpipe test client" "extendedKeyUsage=clientAuth"
cert rogue other 127.0.0.1 "subjectAltName=IP:127.0.0.1,DNS:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
chmod 600 ./*.key
