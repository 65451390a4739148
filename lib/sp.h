/*
 * sp.h - the SP wire format of nng's tcp:// and ipc:// transports, spoken
 * by the server's connections (server/link.c, on plain sockets and on nng
 * streams alike), the client's connection layer (link.c, call.c) and
 * direct connections (netconn.c, pair1). A connection opens with an 8-byte
 * header each way (0x00 'S' 'P' 0x00, the sender's 16-bit protocol id, two
 * zero bytes); then each message is an 8-byte big-endian length and the
 * body, preceded over ipc:// by one message-type byte (0x01). A req0/rep0
 * body starts with the backtrace: 4-byte words, the last (the request id)
 * with its high bit set.
 */
#ifndef QPI_SP_H
#define QPI_SP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QPI_SP_REQ0   0x30u
#define QPI_SP_REP0   0x31u
#define QPI_SP_HS_LEN 8
/* Backtrace words a rep keeps (nng's default maximum ttl is 8). */
#define QPI_SP_MAX_HOPS 8

/* Fills the 8-byte handshake of protocol proto. */
void qpi_sp_hs_make(uint8_t hs[QPI_SP_HS_LEN], uint16_t proto);

/* True when hs is a valid handshake from a peer speaking proto. */
bool qpi_sp_hs_check(const uint8_t hs[QPI_SP_HS_LEN], uint16_t proto);

/* Writes a message's frame header (type byte over ipc, 8-byte length)
 * into hdr (9 bytes room); returns its size. */
size_t qpi_sp_frame_hdr(uint8_t *hdr, bool ipc, uint64_t len);

/* Reads the frame header at p (n bytes there): 0 while it is incomplete,
 * -1 when it is bad (over ipc, a type byte other than 0x01), else its size
 * with *lenp the length of the body that follows. */
int qpi_sp_frame_parse(const uint8_t *p, size_t n, bool ipc, uint64_t *lenp);

/* The size of the backtrace a req0/rep0 body starts with: its words up to
 * and including the first with the high bit set (the request id); 0 when
 * no such word ends within len bytes and QPI_SP_MAX_HOPS words. */
size_t qpi_sp_bt_len(const uint8_t *body, size_t len);

/* Big-endian helpers. */
uint32_t qpi_sp_get32(const uint8_t *p);
void qpi_sp_put32(uint8_t *p, uint32_t v);
uint64_t qpi_sp_get64(const uint8_t *p);
void qpi_sp_put64(uint8_t *p, uint64_t v);

/* The transport a process is told to use for tcp:// and ipc://: true for
 * the raw SP path, false for nng (value "nng"). name: the environment
 * variable (QPIPE_TRANSPORT). */
bool qpi_sp_env_raw(const char *name);

#endif /* QPI_SP_H */
