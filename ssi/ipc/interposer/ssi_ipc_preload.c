/*
 * ssi_ipc_preload.c - route an unmodified program's System V IPC to ssi.
 *
 * LD_PRELOAD=ssi_ipc_preload.so SSI_IPC_SOCKET=/path/to/socket ./program
 * (SSI_IPC_SOCKET=@name: the abstract socket "name" of the process's network namespace)
 *
 * Exports msgget/msgsnd/msgrcv/msgctl, semget/semop/semtimedop/semctl,
 * shmget/shmat/shmdt/shmctl and ssi_shm_sync(). Each call becomes one request on a
 * unix stream socket to the ssi IPC service (ssi/ipc/preload_server.py), in the
 * format documented in ssi/ipc/wire.py; the reply carries the kernel's return value
 * and errno. Without SSI_IPC_SOCKET (read once, at the first call) every function
 * passes straight through to the C library (dlsym RTLD_NEXT).
 *
 * Processes, threads, signals
 *  - One connection per concurrent call (a pool; a thread blocked in msgrcv holds
 *    one). Every connection starts with HELLO(token): the server names the process
 *    by (peer pid, token) and, when its last connection closes (exit, exec: the
 *    sockets are close-on-exec), applies its SEM_UNDO adjustments and detaches its
 *    segments. Differences from Linux: SEM_UNDO adjustments are applied at execve
 *    too (Linux keeps them), and a program that closes every descriptor it did not
 *    open (daemon-style) ends its IPC identity the same way.
 *  - fork(): the child gets a new identity (no SEM_UNDO inherited, as Linux) and
 *    re-registers the attachments it inherited at its first IPC call.
 *  - A blocked msgsnd/msgrcv/semop/semtimedop is interrupted by a signal whose
 *    handler runs, even with SA_RESTART, and returns EINTR, as Linux (the request is
 *    cancelled at the home; if it completed first, its result is returned).
 *  - A lost connection is re-established and the request resent with the same
 *    sequence number (the server answers it once). Before a checkpoint the server
 *    shuts the process's connections (CRIU refuses a socket connected outside the
 *    job); the process, restored anywhere, reconnects and re-sends. If the service stays unreachable
 *    (SSI_IPC_RETRY_MS, default 5000) the call fails with EIO.
 *  - The functions are not async-signal-safe (neither is Linux's msgsnd per POSIX).
 *  - Invalid user pointers crash the program instead of returning EFAULT.
 *
 * Shared memory: explicit sync, twins and diffs (see ssi/ipc/shm.py)
 *  - shmat maps a PRIVATE anonymous region of the segment's size, fills it from the
 *    home and keeps a twin (a copy as of the last sync: an attachment costs twice
 *    the segment's size in memory) and page versions.
 *  - A sync pushes the byte runs that differ from the twin (writers of different
 *    bytes of one page merge), then pulls the pages others wrote since the last
 *    sync, keeping local bytes not yet pushed. Syncs happen at shmat, shmdt, exit
 *    (not _exit), ssi_shm_sync(addr) (addr NULL: all attachments), and, unless
 *    SSI_IPC_SHM_AUTOSYNC=0, around IPC calls: push before semop/semtimedop/msgsnd/
 *    msgrcv, pull after semop/semtimedop (unless all its operations increment) and
 *    after msgrcv. So a program that guards its segment with System V semaphores
 *    or messages sees it coherent.
 *  - What it cannot give: plain loads and stores are not coherent between syncs (a
 *    process spinning on a flag in the segment never sees it change), concurrent
 *    writers of the same byte: the last push wins, no cross-process atomic
 *    instructions, two attachments of one segment in one process are separate
 *    copies until synced, and threads must not write an attachment while a sync of
 *    it runs. Nothing is shared silently: memory changes only at a sync.
 *
 * Build: cc -shared -fPIC -O2 -Wall -o ssi_ipc_preload.so ssi_ipc_preload.c -ldl -lpthread
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/random.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MSG_COPY
#define MSG_COPY 040000
#endif

#define WIRE_VERSION 1
#define MAX_FRAME (16u * 1024u * 1024u + 4096u)
#define MAX_MSG (16u * 1024u * 1024u)
#define PUSH_CHUNK (1u << 20)
#define PULL_PAGES 256u
#define RUN_GAP 32
#define POOL_MAX 256

enum {
	OP_HELLO = 1, OP_CANCEL = 2,
	OP_MSGGET = 10, OP_MSGSND = 11, OP_MSGRCV = 12, OP_MSGCTL = 13,
	OP_SEMGET = 20, OP_SEMOP = 21, OP_SEMCTL = 22, OP_SEMSIZE = 23,
	OP_SHMGET = 30, OP_SHMAT = 31, OP_SHMDT = 32, OP_SHMCTL = 33,
	OP_SHMPUSH = 34, OP_SHMPULL = 35,
};

union semun {
	int val;
	struct semid_ds *buf;
	unsigned short *array;
	struct seminfo *__buf;
};

/* ---- the real functions -------------------------------------------------------- */

static void *real_sym(const char *name, void **slot)
{
	void *p = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
	if (!p) {
		p = dlsym(RTLD_NEXT, name);
		__atomic_store_n(slot, p, __ATOMIC_RELEASE);
	}
	return p;
}

#define DECLARE_REAL(name) static void *real_##name##_p
#define REAL(name) ((__typeof__(&name))real_sym(#name, &real_##name##_p))
DECLARE_REAL(msgget); DECLARE_REAL(msgsnd); DECLARE_REAL(msgrcv); DECLARE_REAL(msgctl);
DECLARE_REAL(semget); DECLARE_REAL(semop); DECLARE_REAL(semtimedop); DECLARE_REAL(semctl);
DECLARE_REAL(shmget); DECLARE_REAL(shmat); DECLARE_REAL(shmdt); DECLARE_REAL(shmctl);

/* ---- configuration -------------------------------------------------------------- */

static int cfg_state = -1; /* -1 unknown, 0 pass through, 1 interpose */
static struct sockaddr_un cfg_addr;
static socklen_t cfg_addrlen;
static int cfg_autosync = 1;
static long cfg_retry_ms = 5000;

static int enabled(void)
{
	int state = __atomic_load_n(&cfg_state, __ATOMIC_ACQUIRE);
	if (state >= 0)
		return state;
	const char *path = getenv("SSI_IPC_SOCKET");
	state = 0;
	if (path && *path && strlen(path) < sizeof(cfg_addr.sun_path)) {
		memset(&cfg_addr, 0, sizeof(cfg_addr));
		cfg_addr.sun_family = AF_UNIX;
		strcpy(cfg_addr.sun_path, path);
		cfg_addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
		if (path[0] == '@') { /* abstract: the node's server, whichever node we are on */
			cfg_addr.sun_path[0] = '\0';
			cfg_addrlen--;
		}
		const char *a = getenv("SSI_IPC_SHM_AUTOSYNC");
		cfg_autosync = !(a && strcmp(a, "0") == 0);
		const char *r = getenv("SSI_IPC_RETRY_MS");
		if (r && *r)
			cfg_retry_ms = strtol(r, NULL, 10);
		state = 1;
	}
	__atomic_store_n(&cfg_state, state, __ATOMIC_RELEASE);
	return state;
}

/* ---- little-endian buffers ------------------------------------------------------ */

struct buf {
	uint8_t *p;
	size_t len, cap;
	int oom;
};

static void b_reserve(struct buf *b, size_t more)
{
	if (b->oom || b->len + more <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + more)
		cap *= 2;
	uint8_t *p = realloc(b->p, cap);
	if (!p) {
		b->oom = 1;
		return;
	}
	b->p = p;
	b->cap = cap;
}

static void b_put(struct buf *b, const void *data, size_t n)
{
	b_reserve(b, n);
	if (b->oom)
		return;
	if (n)
		memcpy(b->p + b->len, data, n);
	b->len += n;
}

static void b_le(struct buf *b, uint64_t v, int n)
{
	uint8_t tmp[8];
	for (int i = 0; i < n; i++)
		tmp[i] = (uint8_t)(v >> (8 * i));
	b_put(b, tmp, (size_t)n);
}

#define put_u16(b, v) b_le((b), (uint16_t)(v), 2)
#define put_u32(b, v) b_le((b), (uint32_t)(v), 4)
#define put_i32(b, v) b_le((b), (uint32_t)(int32_t)(v), 4)
#define put_u64(b, v) b_le((b), (uint64_t)(v), 8)
#define put_i64(b, v) b_le((b), (uint64_t)(int64_t)(v), 8)

static void b_free(struct buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

struct rd {
	const uint8_t *p;
	size_t len, pos;
	int bad;
};

static uint64_t rd_le(struct rd *r, int n)
{
	if (r->bad || r->pos + (size_t)n > r->len) {
		r->bad = 1;
		return 0;
	}
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v |= (uint64_t)r->p[r->pos + (size_t)i] << (8 * i);
	r->pos += (size_t)n;
	return v;
}

#define get_u32(r) ((uint32_t)rd_le((r), 4))
#define get_i32(r) ((int32_t)(uint32_t)rd_le((r), 4))
#define get_u64(r) (rd_le((r), 8))
#define get_i64(r) ((int64_t)rd_le((r), 8))
#define get_u16(r) ((uint16_t)rd_le((r), 2))

static const uint8_t *rd_raw(struct rd *r, size_t n)
{
	if (r->bad || n > r->len - r->pos) {
		r->bad = 1;
		return NULL;
	}
	const uint8_t *p = r->p + r->pos;
	r->pos += n;
	return p;
}

/* ---- connections ------------------------------------------------------------------ */

struct conn {
	int fd;
	uid_t euid;
	gid_t egid;
	int busy;
	int used;
};

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct conn pool[POOL_MAX];
static pid_t pool_pid;
static uint64_t pool_token;
static uint64_t next_seq;

static pthread_mutex_t shm_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP; /* syncs call reinherit() */
static int need_reinherit;

static int send_all(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int recv_all(int fd, uint8_t *p, size_t n)
{
	while (n) {
		ssize_t r = recv(fd, p, n, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (r == 0) {
			errno = ECONNRESET;
			return -1;
		}
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

/* One frame body into *out (malloc'd). */
static int recv_frame(int fd, uint8_t **out, size_t *len)
{
	uint8_t head[4];
	if (recv_all(fd, head, 4) < 0)
		return -1;
	uint32_t n = (uint32_t)head[0] | (uint32_t)head[1] << 8 | (uint32_t)head[2] << 16 |
		     (uint32_t)head[3] << 24;
	if (n > MAX_FRAME || n < 24) {
		errno = EPROTO;
		return -1;
	}
	uint8_t *body = malloc(n);
	if (!body) {
		errno = ENOMEM;
		return -1;
	}
	if (recv_all(fd, body, n) < 0) {
		free(body);
		return -1;
	}
	*out = body;
	*len = n;
	return 0;
}

static void frame_header(struct buf *b, uint16_t op, uint64_t seq)
{
	put_u32(b, 0); /* length, patched by frame_seal */
	put_u16(b, WIRE_VERSION);
	put_u16(b, op);
	put_u32(b, 0);
	put_u64(b, seq);
}

static void frame_seal(struct buf *b)
{
	if (b->oom)
		return;
	uint32_t n = (uint32_t)(b->len - 4);
	for (int i = 0; i < 4; i++)
		b->p[i] = (uint8_t)(n >> (8 * i));
}

static void new_identity(void)
{
	uint64_t t = 0;
	if (getrandom(&t, sizeof(t), GRND_NONBLOCK) != (ssize_t)sizeof(t)) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		t = ((uint64_t)ts.tv_nsec << 32) ^ (uint64_t)ts.tv_sec ^ (uint64_t)getpid();
	}
	pool_token = t;
	pool_pid = getpid();
}

static int open_conn(void)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	while (connect(fd, (struct sockaddr *)&cfg_addr, cfg_addrlen) < 0) {
		if (errno == EINTR)
			continue;
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	/* keep out of the way of programs that expect low descriptors */
	int high = fcntl(fd, F_DUPFD_CLOEXEC, 512);
	if (high >= 0) {
		close(fd);
		fd = high;
	}
	struct buf b = {0};
	frame_header(&b, OP_HELLO, 0);
	put_u64(&b, pool_token);
	put_u32(&b, (uint32_t)getpid());
	put_u32(&b, 0);
	frame_seal(&b);
	uint8_t *reply = NULL;
	size_t rlen = 0;
	int ok = !b.oom && send_all(fd, b.p, b.len) == 0 && recv_frame(fd, &reply, &rlen) == 0;
	b_free(&b);
	if (ok) {
		struct rd r = {reply, rlen, 0, 0};
		(void)get_u64(&r);
		(void)get_i64(&r);
		int32_t err = get_i32(&r);
		(void)get_u32(&r);
		uint32_t version = get_u32(&r);
		ok = !r.bad && err == 0 && version == WIRE_VERSION;
		if (!ok)
			errno = EPROTO;
	}
	free(reply);
	if (!ok) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* After fork() the child's pool holds the parent's connections: drop them. */
static void check_pid_locked(void)
{
	pid_t me = getpid();
	if (pool_pid == me)
		return;
	for (int i = 0; i < POOL_MAX; i++) {
		if (pool[i].used)
			close(pool[i].fd);
		pool[i].used = 0;
		pool[i].busy = 0;
	}
	new_identity();
}

/* A connection for one call: an idle pooled one with our current credentials, or a
 * new one. Returns the pool index, POOL_MAX + fd for an unpooled one, or -1. */
static int acquire_conn(void)
{
	uid_t euid = geteuid();
	gid_t egid = getegid();
	pthread_mutex_lock(&pool_lock);
	check_pid_locked();
	for (int i = 0; i < POOL_MAX; i++) {
		if (pool[i].used && !pool[i].busy && pool[i].euid == euid && pool[i].egid == egid) {
			pool[i].busy = 1;
			pthread_mutex_unlock(&pool_lock);
			return i;
		}
	}
	pthread_mutex_unlock(&pool_lock);
	int fd = open_conn();
	if (fd < 0)
		return -1;
	pthread_mutex_lock(&pool_lock);
	int slot = -1;
	for (int i = 0; i < POOL_MAX; i++) {
		if (pool[i].used && !pool[i].busy && (pool[i].euid != euid || pool[i].egid != egid)) {
			/* credentials changed (setuid): the new connection exists, drop the old */
			close(pool[i].fd);
			pool[i].used = 0;
		}
		if (!pool[i].used && slot < 0)
			slot = i;
	}
	if (slot >= 0) {
		pool[slot] = (struct conn){.fd = fd, .euid = euid, .egid = egid, .busy = 1, .used = 1};
	}
	pthread_mutex_unlock(&pool_lock);
	return slot >= 0 ? slot : POOL_MAX + fd;
}

static int conn_fd(int handle)
{
	return handle >= POOL_MAX ? handle - POOL_MAX : pool[handle].fd;
}

static void release_conn(int handle, int broken)
{
	if (handle >= POOL_MAX) {
		close(handle - POOL_MAX);
		return;
	}
	pthread_mutex_lock(&pool_lock);
	if (broken) {
		close(pool[handle].fd);
		pool[handle].used = 0;
	}
	pool[handle].busy = 0;
	pthread_mutex_unlock(&pool_lock);
}

static void cleanup_conn(void *arg)
{
	release_conn(*(int *)arg, 1); /* thread cancelled mid-call */
}

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* ---- one call ----------------------------------------------------------------------- */

struct reply {
	int64_t ret;
	int32_t err;
	uint8_t *body; /* whole reply body; payload at body + 24 */
	size_t len;
};

static void reply_free(struct reply *r)
{
	free(r->body);
	r->body = NULL;
}

static struct rd reply_payload(const struct reply *r)
{
	struct rd d = {r->body + 24, r->len - 24, 0, 0};
	return d;
}

static void reinherit(void);

/* The server has shut this connection (it does so before a checkpoint). */
static int conn_dead(int fd)
{
	struct pollfd q = {fd, POLLRDHUP, 0};
	return poll(&q, 1, 0) == 1 && (q.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* One attempt on one connection: send the request, wait for its reply (sending
 * CANCEL once if a signal interrupts a cancellable wait). 0, or -1: connection lost. */
static int exchange(int fd, const struct buf *req, uint64_t seq, int cancellable,
		    int *cancel_wanted, struct reply *out)
{
	if (send_all(fd, req->p, req->len) < 0)
		return -1;
	int cancel_sent = 0;
	for (;;) {
		if (*cancel_wanted && !cancel_sent) {
			struct buf c = {0};
			frame_header(&c, OP_CANCEL, 0);
			put_u64(&c, seq);
			frame_seal(&c);
			if (!c.oom)
				send_all(fd, c.p, c.len);
			b_free(&c);
			cancel_sent = 1;
		}
		struct pollfd pfd = {fd, POLLIN, 0};
		if (poll(&pfd, 1, -1) < 0) {
			/* poll is never restarted after a handler, even with SA_RESTART:
			 * as msgrcv and semop, which fail with EINTR. A checkpoint (CRIU
			 * dump or restore) interrupts it too, with no signal: the server
			 * shut this connection before it, so a dead connection means
			 * "re-send on a new one", not "cancel". */
			if (errno == EINTR && cancellable && !conn_dead(fd))
				*cancel_wanted = 1;
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -1;
		}
		uint8_t *body = NULL;
		size_t len = 0;
		if (recv_frame(fd, &body, &len) < 0)
			return -1;
		struct rd r = {body, len, 0, 0};
		if (get_u64(&r) != seq) {
			free(body);
			errno = EPROTO;
			return -1;
		}
		out->ret = get_i64(&r);
		out->err = get_i32(&r);
		out->body = body;
		out->len = len;
		return 0;
	}
}

/* Send a request (payload already in *req after its header) and wait for its reply.
 * Returns 0 with *out filled, or -1 with errno set (the service is unreachable: EIO).
 * A lost connection is replaced and the request resent with the same seq. */
static int call(uint16_t op, struct buf *req, int cancellable, struct reply *out)
{
	if (req->oom) {
		b_free(req);
		errno = ENOMEM;
		return -1;
	}
	if (__atomic_load_n(&need_reinherit, __ATOMIC_ACQUIRE) && op != OP_SHMAT)
		reinherit();
	uint64_t seq = __atomic_add_fetch(&next_seq, 1, __ATOMIC_RELAXED);
	for (int i = 0; i < 8; i++)
		req->p[12 + i] = (uint8_t)(seq >> (8 * i));
	frame_seal(req);

	int cancel_wanted = 0, result = -1;
	long waited = 0, backoff = 10;
	for (;;) {
		int handle = acquire_conn();
		if (handle >= 0) {
			volatile int rc = -1;
			pthread_cleanup_push(cleanup_conn, &handle);
			rc = exchange(conn_fd(handle), req, seq, cancellable, &cancel_wanted, out);
			pthread_cleanup_pop(0);
			release_conn(handle, rc != 0);
			if (rc == 0) {
				result = 0;
				break;
			}
		}
		if (waited >= cfg_retry_ms)
			break;
		sleep_ms(backoff);
		waited += backoff;
		backoff = backoff < 500 ? backoff * 2 : 500;
	}
	b_free(req);
	if (result < 0)
		errno = EIO;
	return result;
}

/* The C call's result from a reply: ret, or -1 with errno. */
static long finish(struct reply *r)
{
	long ret = (long)r->ret;
	if (r->err) {
		errno = r->err;
		ret = -1;
	}
	reply_free(r);
	return ret;
}

static struct buf request(uint16_t op)
{
	struct buf b = {0};
	frame_header(&b, op, 0);
	return b;
}

/* ---- shared memory attachments ------------------------------------------------------ */

struct att {
	struct att *next;
	uint8_t *addr;
	size_t maplen;
	uint64_t segsz;
	uint32_t page; /* the home's page size: granularity of versions */
	uint64_t npages;
	int id;
	int flags;
	uint8_t *twin;
	uint64_t *versions;
	uint64_t since;
};

static struct att *atts;

static int prot_of(const struct att *a)
{
	int prot = (a->flags & SHM_RDONLY) ? PROT_READ : PROT_READ | PROT_WRITE;
	if (a->flags & SHM_EXEC)
		prot |= PROT_EXEC;
	return prot;
}

static int push(struct att *a);
static int pull(struct att *a);

/* Send the runs in *b (an SHMPUSH request with `nruns` runs); on success copy them
 * into the twin and adopt the versions of pages nobody else wrote meanwhile. */
static int push_flush(struct att *a, struct buf *b, uint32_t nruns)
{
	if (!nruns) {
		b_free(b);
		return 0;
	}
	/* nruns sits after the 20-byte header and the i32 id */
	for (int i = 0; i < 4; i++)
		b->p[24 + i] = (uint8_t)(nruns >> (8 * i));
	struct buf copy = {0};
	b_put(&copy, b->p, b->len);
	struct reply r;
	int rc = call(OP_SHMPUSH, b, 0, &r);
	if (rc < 0 || copy.oom) {
		b_free(&copy);
		return -1;
	}
	if (r.err) {
		b_free(&copy);
		errno = r.err;
		reply_free(&r);
		return -1;
	}
	struct rd runs = {copy.p + 28, copy.len - 28, 0, 0};
	for (uint32_t i = 0; i < nruns; i++) {
		uint64_t off = get_u64(&runs);
		uint32_t len = get_u32(&runs);
		const uint8_t *data = rd_raw(&runs, len);
		if (!data || off + len > a->segsz)
			break;
		memcpy(a->twin + off, data, len);
	}
	struct rd d = reply_payload(&r);
	(void)get_u64(&d);
	uint32_t n = get_u32(&d);
	for (uint32_t i = 0; i < n && !d.bad; i++) {
		uint32_t page = get_u32(&d);
		uint64_t old = get_u64(&d), new = get_u64(&d);
		if (!d.bad && page < a->npages && a->versions[page] == old)
			a->versions[page] = new;
	}
	reply_free(&r);
	b_free(&copy);
	return 0;
}

static int push(struct att *a)
{
	if (a->flags & SHM_RDONLY)
		return 0;
	struct buf b = request(OP_SHMPUSH);
	put_i32(&b, a->id);
	put_u32(&b, 0);
	uint32_t nruns = 0;
	const uint8_t *mem = a->addr, *twin = a->twin;
	for (uint64_t p = 0; p < a->npages; p++) {
		size_t start = (size_t)(p * a->page);
		size_t end = start + a->page < a->segsz ? start + a->page : (size_t)a->segsz;
		if (memcmp(mem + start, twin + start, end - start) == 0)
			continue;
		size_t i = start;
		while (i < end) {
			if (mem[i] == twin[i]) {
				i++;
				continue;
			}
			size_t last = i, j = i;
			while (j < end && j - last <= RUN_GAP) {
				if (mem[j] != twin[j])
					last = j;
				j++;
			}
			size_t len = last + 1 - i;
			put_u64(&b, i);
			put_u32(&b, len);
			b_put(&b, mem + i, len);
			nruns++;
			i = last + 1;
		}
		if (b.len >= PUSH_CHUNK) {
			if (push_flush(a, &b, nruns) < 0)
				return -1;
			b = request(OP_SHMPUSH);
			put_i32(&b, a->id);
			put_u32(&b, 0);
			nruns = 0;
		}
	}
	return push_flush(a, &b, nruns);
}

static int pull(struct att *a)
{
	int readonly = (a->flags & SHM_RDONLY) != 0;
	if (readonly && mprotect(a->addr, a->maplen, PROT_READ | PROT_WRITE) < 0)
		return -1;
	uint32_t start = 0;
	int first = 1, rc = 0;
	uint64_t pull_version = 0;
	for (;;) {
		struct buf b = request(OP_SHMPULL);
		put_i32(&b, a->id);
		put_u32(&b, start);
		put_u64(&b, a->since);
		put_u32(&b, PULL_PAGES);
		size_t count_at = b.len;
		put_u32(&b, 0);
		uint32_t known = 0;
		for (uint64_t p = 0; p < a->npages; p++) {
			if (a->versions[p] > a->since) {
				put_u32(&b, p);
				put_u64(&b, a->versions[p]);
				known++;
			}
		}
		if (!b.oom)
			for (int i = 0; i < 4; i++)
				b.p[count_at + (size_t)i] = (uint8_t)(known >> (8 * i));
		struct reply r;
		if (call(OP_SHMPULL, &b, 0, &r) < 0) {
			rc = -1;
			break;
		}
		if (r.err) {
			errno = r.err;
			reply_free(&r);
			rc = -1;
			break;
		}
		struct rd d = reply_payload(&r);
		uint64_t version = get_u64(&d);
		int64_t next = get_i64(&d);
		uint32_t n = get_u32(&d);
		if (first) {
			pull_version = version;
			first = 0;
		}
		for (uint32_t i = 0; i < n && !d.bad; i++) {
			uint32_t page = get_u32(&d);
			uint64_t ver = get_u64(&d);
			uint32_t len = get_u32(&d);
			const uint8_t *data = rd_raw(&d, len);
			uint64_t off = (uint64_t)page * a->page;
			if (!data || page >= a->npages || off + len > a->segsz) {
				d.bad = 1;
				break;
			}
			uint8_t *mem = a->addr + off, *twin = a->twin + off;
			if (memcmp(mem, twin, len) == 0) {
				memcpy(mem, data, len);
			} else {
				for (uint32_t k = 0; k < len; k++)
					if (mem[k] == twin[k])
						mem[k] = data[k];
			}
			memcpy(twin, data, len);
			a->versions[page] = ver;
		}
		int bad = d.bad;
		reply_free(&r);
		if (bad) {
			errno = EPROTO;
			rc = -1;
			break;
		}
		if (next < 0) {
			a->since = pull_version;
			break;
		}
		start = (uint32_t)next;
	}
	if (readonly)
		mprotect(a->addr, a->maplen, prot_of(a));
	return rc;
}

static int sync_att(struct att *a)
{
	if (push(a) < 0)
		return -1;
	return pull(a);
}

/* Release: publish every writable attachment's changes. */
static void autosync_release(void)
{
	if (!cfg_autosync || !__atomic_load_n(&atts, __ATOMIC_ACQUIRE))
		return;
	int e = errno;
	pthread_mutex_lock(&shm_lock);
	for (struct att *a = atts; a; a = a->next)
		push(a);
	pthread_mutex_unlock(&shm_lock);
	errno = e;
}

/* Acquire: take everyone else's published changes. */
static void autosync_acquire(void)
{
	if (!cfg_autosync || !__atomic_load_n(&atts, __ATOMIC_ACQUIRE))
		return;
	int e = errno;
	pthread_mutex_lock(&shm_lock);
	for (struct att *a = atts; a; a = a->next)
		pull(a);
	pthread_mutex_unlock(&shm_lock);
	errno = e;
}

/* A forked child counts its inherited attachments at its home (as fork() does). */
static void reinherit(void)
{
	pthread_mutex_lock(&shm_lock);
	if (__atomic_exchange_n(&need_reinherit, 0, __ATOMIC_ACQ_REL)) {
		for (struct att *a = atts; a; a = a->next) {
			struct buf b = request(OP_SHMAT);
			put_i32(&b, a->id);
			put_i32(&b, a->flags);
			put_u32(&b, 1);
			struct reply r;
			if (call(OP_SHMAT, &b, 0, &r) == 0)
				reply_free(&r);
		}
	}
	pthread_mutex_unlock(&shm_lock);
}

int ssi_shm_sync(const void *addr)
{
	if (!enabled()) {
		errno = ENOSYS;
		return -1;
	}
	int rc = 0, found = 0;
	pthread_mutex_lock(&shm_lock);
	for (struct att *a = atts; a; a = a->next) {
		if (addr && !((const uint8_t *)addr >= a->addr &&
			      (const uint8_t *)addr < a->addr + a->maplen))
			continue;
		found = 1;
		if (sync_att(a) < 0)
			rc = -1;
	}
	pthread_mutex_unlock(&shm_lock);
	if (addr && !found) {
		errno = EINVAL;
		return -1;
	}
	return rc;
}

/* ---- fork and exit ------------------------------------------------------------------ */

static void at_prepare(void)
{
	pthread_mutex_lock(&shm_lock);
	pthread_mutex_lock(&pool_lock);
}

static void at_parent(void)
{
	pthread_mutex_unlock(&pool_lock);
	pthread_mutex_unlock(&shm_lock);
}

static void at_child(void)
{
	/* the child's only thread is not the owner the recursive lock remembers:
	 * start both locks afresh instead of unlocking them */
	pthread_mutexattr_t attr;
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
	pthread_mutex_init(&shm_lock, &attr);
	pthread_mutexattr_destroy(&attr);
	pthread_mutex_init(&pool_lock, NULL);
	if (atts)
		__atomic_store_n(&need_reinherit, 1, __ATOMIC_RELEASE);
}

__attribute__((constructor)) static void ssi_ipc_init(void)
{
	pthread_atfork(at_prepare, at_parent, at_child);
}

__attribute__((destructor)) static void ssi_ipc_fini(void)
{
	/* exit(): what this process wrote reaches the home, as it would in real memory
	 * (a forked child that never called IPC registers its attachments first) */
	if (cfg_state != 1 || !atts)
		return;
	pthread_mutex_lock(&shm_lock);
	for (struct att *a = atts; a; a = a->next)
		push(a);
	pthread_mutex_unlock(&shm_lock);
}

/* ---- message queues ----------------------------------------------------------------- */

int msgget(key_t key, int msgflg)
{
	if (!enabled())
		return REAL(msgget)(key, msgflg);
	struct buf b = request(OP_MSGGET);
	put_i32(&b, key);
	put_i32(&b, msgflg);
	struct reply r;
	if (call(OP_MSGGET, &b, 0, &r) < 0)
		return -1;
	return (int)finish(&r);
}

int msgsnd(int msqid, const void *msgp, size_t msgsz, int msgflg)
{
	if (!enabled())
		return REAL(msgsnd)(msqid, msgp, msgsz, msgflg);
	if ((ssize_t)msgsz < 0 || msgsz > MAX_MSG) {
		errno = EINVAL;
		return -1;
	}
	autosync_release();
	long mtype;
	memcpy(&mtype, msgp, sizeof(long));
	struct buf b = request(OP_MSGSND);
	put_i32(&b, msqid);
	put_i32(&b, msgflg);
	put_i64(&b, mtype);
	put_u64(&b, msgsz);
	b_put(&b, (const uint8_t *)msgp + sizeof(long), msgsz);
	struct reply r;
	if (call(OP_MSGSND, &b, 1, &r) < 0)
		return -1;
	return (int)finish(&r);
}

ssize_t msgrcv(int msqid, void *msgp, size_t msgsz, long msgtyp, int msgflg)
{
	if (!enabled())
		return REAL(msgrcv)(msqid, msgp, msgsz, msgtyp, msgflg);
	if ((ssize_t)msgsz < 0) {
		errno = EINVAL;
		return -1;
	}
	autosync_release();
	struct buf b = request(OP_MSGRCV);
	put_i32(&b, msqid);
	put_i32(&b, msgflg);
	put_i64(&b, msgtyp);
	put_u64(&b, msgsz);
	struct reply r;
	if (call(OP_MSGRCV, &b, 1, &r) < 0)
		return -1;
	if (r.err)
		return (ssize_t)finish(&r);
	struct rd d = reply_payload(&r);
	int64_t mtype = get_i64(&d);
	const uint8_t *data = rd_raw(&d, (size_t)r.ret);
	if (!data || (uint64_t)r.ret > msgsz) {
		reply_free(&r);
		errno = EPROTO;
		return -1;
	}
	long t = (long)mtype;
	memcpy(msgp, &t, sizeof(long));
	memcpy((uint8_t *)msgp + sizeof(long), data, (size_t)r.ret);
	ssize_t n = (ssize_t)r.ret;
	reply_free(&r);
	if (!(msgflg & MSG_COPY))
		autosync_acquire();
	return n;
}

static void get_perm(struct rd *d, struct ipc_perm *p)
{
	p->__key = get_i32(d);
	p->uid = get_u32(d);
	p->gid = get_u32(d);
	p->cuid = get_u32(d);
	p->cgid = get_u32(d);
	p->mode = get_u32(d);
	p->__seq = (unsigned short)get_u32(d);
}

int msgctl(int msqid, int cmd, struct msqid_ds *buf)
{
	if (!enabled())
		return REAL(msgctl)(msqid, cmd, buf);
	struct buf b = request(OP_MSGCTL);
	put_i32(&b, msqid);
	put_i32(&b, cmd);
	if (cmd == IPC_SET) {
		put_u32(&b, buf->msg_perm.uid);
		put_u32(&b, buf->msg_perm.gid);
		put_u32(&b, buf->msg_perm.mode);
		put_u32(&b, 0);
		put_u64(&b, buf->msg_qbytes);
	}
	struct reply r;
	if (call(OP_MSGCTL, &b, 0, &r) < 0)
		return -1;
	if (!r.err && cmd == IPC_STAT) {
		struct rd d = reply_payload(&r);
		struct msqid_ds ds;
		memset(&ds, 0, sizeof(ds));
		get_perm(&d, &ds.msg_perm);
		ds.msg_stime = (time_t)get_i64(&d);
		ds.msg_rtime = (time_t)get_i64(&d);
		ds.msg_ctime = (time_t)get_i64(&d);
		ds.__msg_cbytes = get_u64(&d);
		ds.msg_qnum = get_u64(&d);
		ds.msg_qbytes = get_u64(&d);
		ds.msg_lspid = get_i32(&d);
		ds.msg_lrpid = get_i32(&d);
		*buf = ds;
	} else if (!r.err && (cmd == IPC_INFO || cmd == MSG_INFO)) {
		struct rd d = reply_payload(&r);
		struct msginfo info;
		memset(&info, 0, sizeof(info));
		info.msgmax = get_i32(&d);
		info.msgmnb = get_i32(&d);
		info.msgmni = get_i32(&d);
		info.msgssz = 16;
		info.msgseg = 0xffff;
		info.msgpool = info.msgmni * info.msgmnb / 1024;
		info.msgmap = info.msgmnb;
		info.msgtql = info.msgmnb;
		memcpy(buf, &info, sizeof(info));
	}
	return (int)finish(&r);
}

/* ---- semaphores ---------------------------------------------------------------------- */

int semget(key_t key, int nsems, int semflg)
{
	if (!enabled())
		return REAL(semget)(key, nsems, semflg);
	struct buf b = request(OP_SEMGET);
	put_i32(&b, key);
	put_i32(&b, nsems);
	put_i32(&b, semflg);
	struct reply r;
	if (call(OP_SEMGET, &b, 0, &r) < 0)
		return -1;
	return (int)finish(&r);
}

int semtimedop(int semid, struct sembuf *sops, size_t nsops, const struct timespec *timeout)
{
	if (!enabled())
		return REAL(semtimedop)(semid, sops, nsops, timeout);
	if (nsops > 65536) {
		errno = E2BIG;
		return -1;
	}
	int64_t ns = -1;
	if (timeout) {
		if (timeout->tv_sec < 0 || timeout->tv_nsec < 0 || timeout->tv_nsec >= 1000000000L) {
			errno = EINVAL;
			return -1;
		}
		ns = timeout->tv_sec > 9000000000L ? INT64_MAX
						   : (int64_t)timeout->tv_sec * 1000000000LL + timeout->tv_nsec;
	}
	int acquires = 0;
	for (size_t i = 0; i < nsops; i++)
		if (sops[i].sem_op <= 0)
			acquires = 1;
	autosync_release();
	struct buf b = request(OP_SEMOP);
	put_i32(&b, semid);
	put_u32(&b, nsops);
	put_i64(&b, ns);
	for (size_t i = 0; i < nsops; i++) {
		put_u16(&b, sops[i].sem_num);
		put_u16(&b, (uint16_t)sops[i].sem_op);
		put_u16(&b, (uint16_t)sops[i].sem_flg);
	}
	struct reply r;
	if (call(OP_SEMOP, &b, 1, &r) < 0)
		return -1;
	int rc = (int)finish(&r);
	if (rc == 0 && acquires)
		autosync_acquire();
	return rc;
}

int semop(int semid, struct sembuf *sops, size_t nsops)
{
	if (!enabled())
		return REAL(semop)(semid, sops, nsops);
	return semtimedop(semid, sops, nsops, NULL);
}

static long sem_size(int semid)
{
	struct buf b = request(OP_SEMSIZE);
	put_i32(&b, semid);
	struct reply r;
	if (call(OP_SEMSIZE, &b, 0, &r) < 0)
		return -1;
	return finish(&r);
}

int semctl(int semid, int semnum, int cmd, ...)
{
	union semun arg = {0};
	switch (cmd) {
	case SETVAL: case GETALL: case SETALL: case IPC_STAT: case IPC_SET:
	case IPC_INFO: case SEM_INFO: case SEM_STAT: case SEM_STAT_ANY: {
		va_list ap;
		va_start(ap, cmd);
		arg = va_arg(ap, union semun);
		va_end(ap);
		break;
	}
	default:
		break;
	}
	if (!enabled())
		return REAL(semctl)(semid, semnum, cmd, arg);
	struct buf b = request(OP_SEMCTL);
	put_i32(&b, semid);
	put_i32(&b, semnum);
	put_i32(&b, cmd);
	put_i32(&b, cmd == SETVAL ? arg.val : 0);
	if (cmd == SETALL) {
		long n = sem_size(semid);
		if (n < 0) {
			b_free(&b);
			return -1;
		}
		put_u32(&b, (uint32_t)n);
		for (long i = 0; i < n; i++)
			put_u16(&b, arg.array[i]);
	} else if (cmd == IPC_SET) {
		put_u32(&b, arg.buf->sem_perm.uid);
		put_u32(&b, arg.buf->sem_perm.gid);
		put_u32(&b, arg.buf->sem_perm.mode);
	}
	struct reply r;
	if (call(OP_SEMCTL, &b, 0, &r) < 0)
		return -1;
	if (!r.err && cmd == GETALL) {
		struct rd d = reply_payload(&r);
		uint32_t n = get_u32(&d);
		for (uint32_t i = 0; i < n && !d.bad; i++)
			arg.array[i] = get_u16(&d);
	} else if (!r.err && cmd == IPC_STAT) {
		struct rd d = reply_payload(&r);
		struct semid_ds ds;
		memset(&ds, 0, sizeof(ds));
		get_perm(&d, &ds.sem_perm);
		ds.sem_otime = (time_t)get_i64(&d);
		ds.sem_ctime = (time_t)get_i64(&d);
		ds.sem_nsems = get_u64(&d);
		*arg.buf = ds;
	} else if (!r.err && (cmd == IPC_INFO || cmd == SEM_INFO)) {
		struct rd d = reply_payload(&r);
		struct seminfo info;
		memset(&info, 0, sizeof(info));
		info.semmsl = get_i32(&d);
		info.semmns = get_i32(&d);
		info.semopm = get_i32(&d);
		info.semmni = get_i32(&d);
		info.semvmx = get_i32(&d);
		info.semaem = get_i32(&d);
		info.semmap = info.semmns;
		info.semmnu = info.semmns;
		info.semume = info.semopm;
		info.semusz = 20;
		*arg.__buf = info;
	}
	return (int)finish(&r);
}

/* ---- shared memory -------------------------------------------------------------------- */

int shmget(key_t key, size_t size, int shmflg)
{
	if (!enabled())
		return REAL(shmget)(key, size, shmflg);
	struct buf b = request(OP_SHMGET);
	put_i32(&b, key);
	put_i32(&b, shmflg);
	put_u64(&b, size);
	struct reply r;
	if (call(OP_SHMGET, &b, 0, &r) < 0)
		return -1;
	return (int)finish(&r);
}

static int shm_detach_remote(int id)
{
	struct buf b = request(OP_SHMDT);
	put_i32(&b, id);
	struct reply r;
	if (call(OP_SHMDT, &b, 0, &r) < 0)
		return -1;
	return (int)finish(&r);
}

void *shmat(int shmid, const void *shmaddr, int shmflg)
{
	if (!enabled())
		return REAL(shmat)(shmid, shmaddr, shmflg);
	uintptr_t addr = (uintptr_t)shmaddr;
	uintptr_t lba = (uintptr_t)SHMLBA;
	if (shmid < 0)
		goto einval;
	if (addr) {
		if (addr & (lba - 1)) {
			if (!(shmflg & SHM_RND))
				goto einval;
			addr &= ~(lba - 1);
			if (!addr && (shmflg & SHM_REMAP))
				goto einval;
		}
	} else if (shmflg & SHM_REMAP) {
		goto einval;
	}
	struct buf b = request(OP_SHMAT);
	put_i32(&b, shmid);
	put_i32(&b, shmflg);
	put_u32(&b, 0);
	struct reply r;
	if (call(OP_SHMAT, &b, 0, &r) < 0)
		return (void *)-1;
	if (r.err) {
		finish(&r);
		return (void *)-1;
	}
	struct rd d = reply_payload(&r);
	uint64_t segsz = get_u64(&d);
	uint32_t page = get_u32(&d);
	reply_free(&r);
	if (d.bad || !page || !segsz) {
		shm_detach_remote(shmid);
		errno = EPROTO;
		return (void *)-1;
	}
	long sys_page = sysconf(_SC_PAGESIZE);
	size_t maplen = (size_t)((segsz + (uint64_t)sys_page - 1) / (uint64_t)sys_page * (uint64_t)sys_page);
	int mflags = MAP_PRIVATE | MAP_ANONYMOUS;
	if (addr)
		mflags |= (shmflg & SHM_REMAP) ? MAP_FIXED : MAP_FIXED_NOREPLACE;
	void *mem = mmap((void *)addr, maplen, PROT_READ | PROT_WRITE, mflags, -1, 0);
	if (mem == MAP_FAILED || (addr && (uintptr_t)mem != addr)) {
		int e = errno;
		if (mem != MAP_FAILED)
			munmap(mem, maplen);
		shm_detach_remote(shmid);
		errno = (mem == MAP_FAILED && e == ENOMEM) ? ENOMEM : EINVAL;
		return (void *)-1;
	}
	struct att *a = calloc(1, sizeof(*a));
	uint64_t npages = (segsz + page - 1) / page;
	if (a) {
		a->twin = calloc(1, (size_t)segsz);
		a->versions = calloc((size_t)npages, sizeof(uint64_t));
	}
	if (!a || !a->twin || !a->versions) {
		if (a) {
			free(a->twin);
			free(a->versions);
			free(a);
		}
		munmap(mem, maplen);
		shm_detach_remote(shmid);
		errno = ENOMEM;
		return (void *)-1;
	}
	a->addr = mem;
	a->maplen = maplen;
	a->segsz = segsz;
	a->page = page;
	a->npages = npages;
	a->id = shmid;
	a->flags = shmflg & (SHM_RDONLY | SHM_EXEC);
	pthread_mutex_lock(&shm_lock);
	/* another attachment of this segment here publishes first: the new copy starts
	 * with what this process wrote */
	for (struct att *o = atts; o; o = o->next)
		if (o->id == shmid)
			push(o);
	int rc = pull(a);
	if (rc == 0) {
		a->next = atts;
		__atomic_store_n(&atts, a, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&shm_lock);
	if (rc < 0) {
		int e = errno;
		munmap(mem, maplen);
		free(a->twin);
		free(a->versions);
		free(a);
		shm_detach_remote(shmid);
		errno = e;
		return (void *)-1;
	}
	if (prot_of(a) != (PROT_READ | PROT_WRITE))
		mprotect(mem, maplen, prot_of(a));
	return mem;
einval:
	errno = EINVAL;
	return (void *)-1;
}

int shmdt(const void *shmaddr)
{
	if (!enabled())
		return REAL(shmdt)(shmaddr);
	pthread_mutex_lock(&shm_lock);
	struct att **link = &atts, *a = NULL;
	for (; *link; link = &(*link)->next) {
		if ((*link)->addr == (const uint8_t *)shmaddr) {
			a = *link;
			break;
		}
	}
	if (!a) {
		pthread_mutex_unlock(&shm_lock);
		return REAL(shmdt)(shmaddr); /* not ours: the kernel's answer (EINVAL) */
	}
	push(a);
	*link = a->next;
	pthread_mutex_unlock(&shm_lock);
	munmap(a->addr, a->maplen);
	int id = a->id;
	free(a->twin);
	free(a->versions);
	free(a);
	return shm_detach_remote(id);
}

int shmctl(int shmid, int cmd, struct shmid_ds *buf)
{
	if (!enabled())
		return REAL(shmctl)(shmid, cmd, buf);
	if (cmd == SHM_INFO || cmd == SHM_STAT || cmd == SHM_STAT_ANY) {
		errno = EINVAL; /* index-based views: use `ssi ipc list` */
		return -1;
	}
	struct buf b = request(OP_SHMCTL);
	put_i32(&b, shmid);
	put_i32(&b, cmd);
	if (cmd == IPC_SET) {
		put_u32(&b, buf->shm_perm.uid);
		put_u32(&b, buf->shm_perm.gid);
		put_u32(&b, buf->shm_perm.mode);
	}
	struct reply r;
	if (call(OP_SHMCTL, &b, 0, &r) < 0)
		return -1;
	if (!r.err && cmd == IPC_STAT) {
		struct rd d = reply_payload(&r);
		struct shmid_ds ds;
		memset(&ds, 0, sizeof(ds));
		get_perm(&d, &ds.shm_perm);
		ds.shm_segsz = get_u64(&d);
		ds.shm_atime = (time_t)get_i64(&d);
		ds.shm_dtime = (time_t)get_i64(&d);
		ds.shm_ctime = (time_t)get_i64(&d);
		ds.shm_cpid = get_i32(&d);
		ds.shm_lpid = get_i32(&d);
		ds.shm_nattch = get_u64(&d);
		*buf = ds;
	} else if (!r.err && cmd == IPC_INFO) {
		struct rd d = reply_payload(&r);
		struct shminfo info;
		memset(&info, 0, sizeof(info));
		info.shmmax = get_u64(&d);
		info.shmmin = get_u64(&d);
		info.shmmni = get_u64(&d);
		info.shmall = get_u64(&d);
		info.shmseg = info.shmmni;
		memcpy(buf, &info, sizeof(info));
	}
	return (int)finish(&r);
}
