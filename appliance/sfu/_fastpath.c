/* The SFU's forwarding path per subscriber, in C: what a forwarded packet costs for each of a
 * publisher's subscribers once the decisions about it are made (see forwarder.py).
 *
 * For each down track: the sequence number and timestamp rewritten (Rewriter), the VP8 payload
 * descriptor carried on across source changes (vp8_rewrite), the RTP header written from the
 * subscriber's negotiated extension IDs, the packet kept for NACKs, SRTP-protected through the
 * subscriber's libsrtp session (the one aiortc's DTLS transport keyed, called through the
 * function pointer pylibsrtp exports) and sent with sendto() on the selected ICE pair's socket;
 * then counted for the sender reports and the metrics. `fanout` runs that for all of one packet's
 * subscribers in one call, and gives back those whose packet needs Python's decisions first
 * (a source change, a keyframe, the first packet, a transport that changed), which then call
 * `Down.forward` themselves once decided.
 *
 * Nothing here decides; forwarder.py and aiortc_private.py set each Down's state. The module is
 * single-threaded like the event loop that calls it.
 */
#define PY_SSIZE_T_CLEAN
/* The stable ABI of Python 3.11 and later: one build of the wheel serves every such Python. */
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030B0000
#endif
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define HISTORY 128          /* aiortc's RTP_HISTORY_SIZE: packets kept for NACKs per down track */
#define REORDER_HORIZON 0x4000
#define STACK_PACKET 2048    /* packets up to this size are written on the stack, larger ones on the heap */
#define MAX_HEADER (12 + 15 * 4 + 4 + MAX_TEMPLATE + 4 + 2 + 3 + 3)
#define SRTP_TRAILER 160     /* >= libsrtp's SRTP_MAX_TRAILER_LEN (tag + MKI) */
#define MAX_TEMPLATE 64
#define SAMPLES 16           /* byte counts noted for the retransmission budget: over 1.5 s at one per 0.1 s */
#define SAMPLE_INTERVAL 0.1  /* at most this often (the budget's window is known to that) */

/* What the limited API has as functions only. */
#define BYTES(o) ((unsigned char *)PyBytes_AsString(o))
#define BYTES_SIZE(o) PyBytes_Size(o)

static void replace(PyObject **slot, PyObject *value) {  /* takes value's reference */
    PyObject *old = *slot;
    *slot = value;
    Py_XDECREF(old);
}

static void free_object(PyObject *self) {
    PyTypeObject *type = Py_TYPE(self);
    freefunc free = (freefunc)PyType_GetSlot(type, Py_tp_free);
    free(self);
    Py_DECREF(type);  /* a heap type's instances hold a reference to it */
}

typedef int (*protect_fn)(void *session, void *packet, int *length);

static PyObject *str_state;  /* "_state" */
static PyObject *one;        /* the ICE component 1 */

static int uint16_gt(unsigned a, unsigned b) {
    return (a > b && a - b < 0x8000) || (a < b && b - a > 0x8000);
}

/* ---------- Counters: what the SFU forwarded, by kind (the metrics) ---------- */

typedef struct {
    PyObject_HEAD
    long long packets[2];  /* audio, video */
    long long bytes[2];
    long long send_errors;  /* datagrams the kernel refused (a full socket buffer) or SRTP could not protect */
} Counters;

static PyObject *Counters_add(Counters *self, PyObject *args) {
    int video;
    long long packets, bytes, send_errors = 0;
    if (!PyArg_ParseTuple(args, "pLL|L", &video, &packets, &bytes, &send_errors))
        return NULL;
    self->packets[video] += packets;
    self->bytes[video] += bytes;
    self->send_errors += send_errors;
    Py_RETURN_NONE;
}

static PyMethodDef Counters_methods[] = {
    {"add", (PyCFunction)Counters_add, METH_VARARGS,
     "add(video, packets, bytes, send_errors=0): count packets forwarded (and datagrams lost sending)"},
    {NULL}};

static PyMemberDef Counters_members[] = {
    {"audio_packets", T_LONGLONG, offsetof(Counters, packets), READONLY, NULL},
    {"video_packets", T_LONGLONG, offsetof(Counters, packets) + sizeof(long long), READONLY, NULL},
    {"audio_bytes", T_LONGLONG, offsetof(Counters, bytes), READONLY, NULL},
    {"video_bytes", T_LONGLONG, offsetof(Counters, bytes) + sizeof(long long), READONLY, NULL},
    {"send_errors", T_LONGLONG, offsetof(Counters, send_errors), READONLY, NULL},
    {NULL}};

static PyTypeObject *CountersType;

static PyType_Slot Counters_slots[] = {
    {Py_tp_doc, (void *)"Packets and payload bytes forwarded, audio and video."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_methods, Counters_methods},
    {Py_tp_members, Counters_members},
    {0, NULL}};

static PyType_Spec Counters_spec = {"appliance.sfu._fastpath.Counters", sizeof(Counters), 0, Py_TPFLAGS_DEFAULT, Counters_slots};

/* ---------- SendTimes: one transport's transport-wide sequence numbers (twcc.py) ---------- */

typedef struct {
    PyObject_HEAD
    int next;
    int size;
    int *numbers;
    double *times;
} SendTimes;

static int SendTimes_init(SendTimes *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"size", NULL};
    int size;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i", kwlist, &size))
        return -1;
    if (size <= 0 || size > 65536) {
        PyErr_SetString(PyExc_ValueError, "size must be 1..65536");
        return -1;
    }
    PyMem_Free(self->numbers);
    PyMem_Free(self->times);
    self->numbers = PyMem_New(int, size);
    self->times = PyMem_New(double, size);
    if (self->numbers == NULL || self->times == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < size; i++) {
        self->numbers[i] = -1;
        self->times[i] = 0.0;
    }
    self->size = size;
    self->next = 0;
    return 0;
}

static void SendTimes_dealloc(SendTimes *self) {
    PyMem_Free(self->numbers);
    PyMem_Free(self->times);
    free_object((PyObject *)self);
}

static int take(SendTimes *self, double now) {
    int sequence = self->next & 0xFFFF;
    self->next = (sequence + 1) & 0xFFFF;
    self->numbers[sequence % self->size] = sequence;
    self->times[sequence % self->size] = now;
    return sequence;
}

static PyObject *SendTimes_take(SendTimes *self, PyObject *arg) {
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(take(self, now));
}

static PyObject *SendTimes_sent_at(SendTimes *self, PyObject *arg) {
    long sequence = PyLong_AsLong(arg);
    if (sequence == -1 && PyErr_Occurred())
        return NULL;
    sequence &= 0xFFFF;
    if (self->numbers[sequence % self->size] != sequence)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(self->times[sequence % self->size]);
}

static PyMethodDef SendTimes_methods[] = {
    {"take", (PyCFunction)SendTimes_take, METH_O, "take(now): the next number, noted as sent at now"},
    {"sent_at", (PyCFunction)SendTimes_sent_at, METH_O,
     "sent_at(sequence): when that number was sent (None: not kept any more)"},
    {NULL}};

static PyMemberDef SendTimes_members[] = {
    {"next_sequence", T_INT, offsetof(SendTimes, next), 0, "the next number taken (0..65535)"},
    {NULL}};

static PyTypeObject *SendTimesType;

static PyType_Slot SendTimes_slots[] = {
    {Py_tp_doc, (void *)"SendTimes(size): transport-wide sequence numbers and when each was sent (the last size)."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, (initproc)SendTimes_init},
    {Py_tp_dealloc, (destructor)SendTimes_dealloc},
    {Py_tp_methods, SendTimes_methods},
    {Py_tp_members, SendTimes_members},
    {0, NULL}};

static PyType_Spec SendTimes_spec = {"appliance.sfu._fastpath.SendTimes", sizeof(SendTimes), 0, Py_TPFLAGS_DEFAULT, SendTimes_slots};

/* ---------- Rewriter: a source's numbers onto a subscriber's (forwarder.RtpRewriter) ---------- */

typedef struct {
    PyObject_HEAD
    unsigned clock_rate;
    unsigned seq_offset;
    uint32_t ts_offset;
    unsigned last_seq;
    uint32_t last_ts;
    double last_time;
    int has_last_time;
    int start_seq;  /* -1: none (past the reorder horizon) */
    unsigned highest_seq;
} Rewriter;

static int Rewriter_init(Rewriter *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"clock_rate", "last_seq", "last_ts", NULL};
    unsigned clock_rate, last_seq;
    unsigned long last_ts;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "IIk", kwlist, &clock_rate, &last_seq, &last_ts))
        return -1;
    self->clock_rate = clock_rate;
    self->last_seq = last_seq & 0xFFFF;
    self->last_ts = (uint32_t)last_ts;
    self->seq_offset = self->ts_offset = 0;
    self->has_last_time = 0;
    self->start_seq = -1;
    self->highest_seq = 0;
    return 0;
}

static void restart(Rewriter *self, unsigned seq, uint32_t ts, double now) {
    double elapsed = self->has_last_time ? now - self->last_time : 0.0;
    long long advance = (long long)(elapsed * self->clock_rate);
    if (advance < 1)
        advance = 1;
    self->seq_offset = (self->last_seq + 1 - seq) & 0xFFFF;
    self->ts_offset = (uint32_t)(self->last_ts + (uint32_t)advance - ts);
    self->start_seq = (int)seq;
    self->highest_seq = seq;
}

/* 0: the packet is older than the restart and is dropped. */
static int rewrite(Rewriter *self, unsigned seq, uint32_t ts, double now, unsigned *out_seq, uint32_t *out_ts) {
    if (self->start_seq >= 0) {
        if (uint16_gt((unsigned)self->start_seq, seq))
            return 0;
        if (uint16_gt(seq, self->highest_seq)) {
            self->highest_seq = seq;
            if (((seq - (unsigned)self->start_seq) & 0xFFFF) > REORDER_HORIZON)
                self->start_seq = -1;
        }
    }
    *out_seq = (seq + self->seq_offset) & 0xFFFF;
    *out_ts = ts + self->ts_offset;
    if (!self->has_last_time || uint16_gt(*out_seq, self->last_seq)) {
        self->last_seq = *out_seq;
        self->last_ts = *out_ts;
        self->last_time = now;
        self->has_last_time = 1;
    }
    return 1;
}

static PyObject *Rewriter_restart(Rewriter *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"seq", "ts", "now", NULL};
    unsigned seq;
    unsigned long ts;
    double now;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Ikd", kwlist, &seq, &ts, &now))
        return NULL;
    restart(self, seq & 0xFFFF, (uint32_t)ts, now);
    Py_RETURN_NONE;
}

static PyObject *Rewriter_rewrite(Rewriter *self, PyObject *args) {
    unsigned seq, out_seq;
    unsigned long ts;
    uint32_t out_ts;
    double now;
    if (!PyArg_ParseTuple(args, "Ikd", &seq, &ts, &now))
        return NULL;
    if (!rewrite(self, seq & 0xFFFF, (uint32_t)ts, now, &out_seq, &out_ts))
        Py_RETURN_NONE;
    return Py_BuildValue("(Ik)", out_seq, (unsigned long)out_ts);
}

static PyObject *Rewriter_get_start_seq(Rewriter *self, void *closure) {
    if (self->start_seq < 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->start_seq);
}

static PyMethodDef Rewriter_methods[] = {
    {"restart", (PyCFunction)(void (*)(void))Rewriter_restart, METH_VARARGS | METH_KEYWORDS,
     "restart(seq, ts, now): make (seq, ts), a new or restarted source's next packet, follow the last "
     "packet sent, the timestamp advanced by the wall-clock time in between"},
    {"rewrite", (PyCFunction)Rewriter_rewrite, METH_VARARGS,
     "rewrite(seq, ts, now): the subscriber's (seq, ts); None for a packet older than the restart"},
    {NULL}};

static PyMemberDef Rewriter_members[] = {
    {"clock_rate", T_UINT, offsetof(Rewriter, clock_rate), READONLY, NULL},
    {"last_seq", T_UINT, offsetof(Rewriter, last_seq), READONLY, NULL},
    {"last_ts", T_UINT, offsetof(Rewriter, last_ts), READONLY, NULL},
    {"highest_seq", T_UINT, offsetof(Rewriter, highest_seq), READONLY, NULL},
    {NULL}};

static PyGetSetDef Rewriter_getset[] = {
    {"start_seq", (getter)Rewriter_get_start_seq, NULL, "the restart's sequence number (None: past the horizon)"},
    {NULL}};

static PyTypeObject *RewriterType;

static PyType_Slot Rewriter_slots[] = {
    {Py_tp_doc, (void *)"Rewriter(clock_rate, last_seq, last_ts): one source's sequence numbers and timestamps mapped "
              "onto a subscriber's, continuous across restarts (see forwarder.RtpRewriter)."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, (initproc)Rewriter_init},
    {Py_tp_methods, Rewriter_methods},
    {Py_tp_members, Rewriter_members},
    {Py_tp_getset, Rewriter_getset},
    {0, NULL}};

static PyType_Spec Rewriter_spec = {"appliance.sfu._fastpath.Rewriter", sizeof(Rewriter), 0, Py_TPFLAGS_DEFAULT, Rewriter_slots};

/* ---------- VP8 payload descriptor (vp8.py) ---------- */

/* Offsets of the descriptor's fields in payload (0: absent); all 0 when it is cut short. */
static void vp8_fields(const unsigned char *p, Py_ssize_t n, int *picture_id, int *width, int *tl0, int *keyidx) {
    int position = 2;
    *picture_id = *width = *tl0 = *keyidx = 0;
    if (n < 2 || !(p[0] & 0x80))
        return;
    unsigned flags = p[1];
    if (flags & 0x80) {
        if (n <= position)
            return;
        *picture_id = position;
        *width = (p[position] & 0x80) ? 2 : 1;
        position += *width;
    }
    if (flags & 0x40)
        *tl0 = position++;
    if (flags & 0x30)
        *keyidx = position++;
    if (n < position)
        *picture_id = *width = *tl0 = *keyidx = 0;
}

/* Rewrite the descriptor of p (n bytes) in place. */
static void vp8_rewrite_in_place(unsigned char *p, Py_ssize_t n, int picture_id_offset, int tl0_offset,
                                 int keyidx_offset) {
    int picture_id, width, tl0, keyidx;
    vp8_fields(p, n, &picture_id, &width, &tl0, &keyidx);
    if (picture_id) {
        if (width == 2) {
            unsigned value = ((((p[picture_id] & 0x7F) << 8) | p[picture_id + 1]) + picture_id_offset) & 0x7FFF;
            p[picture_id] = 0x80 | (value >> 8);
            p[picture_id + 1] = value & 0xFF;
        } else {
            p[picture_id] = (p[picture_id] + picture_id_offset) & 0x7F;
        }
    }
    if (tl0)
        p[tl0] = (p[tl0] + tl0_offset) & 0xFF;
    if (keyidx)
        p[keyidx] = (p[keyidx] & 0xE0) | ((p[keyidx] + keyidx_offset) & 0x1F);
}

static PyObject *vp8_rewrite(PyObject *module, PyObject *args) {
    Py_buffer payload;
    int picture_id_offset, tl0_offset, keyidx_offset;
    if (!PyArg_ParseTuple(args, "y*iii", &payload, &picture_id_offset, &tl0_offset, &keyidx_offset))
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(payload.buf, payload.len);
    if (out != NULL)
        vp8_rewrite_in_place(BYTES(out), payload.len, picture_id_offset, tl0_offset,
                             keyidx_offset);
    PyBuffer_Release(&payload);
    return out;
}

/* ---------- Down: one subscriber's copy of a track ---------- */

enum { UNBOUND, NATIVE, PYTHON };

typedef struct {
    PyObject_HEAD
    uint32_t ssrc;
    int video;
    int payload_type;
    long long source_ssrc;  /* -1: none */
    int fast;               /* the steady state: fanout may forward without asking Python */
    /* the payload byte count noted at most every SAMPLE_INTERVAL, a ring (see window_base) */
    double next_sample;
    double sample_time[SAMPLES];
    long long sample_bytes[SAMPLES];
    int samples, sample_next;
    Rewriter *rewriter;
    Counters *counters;
    /* the header: the constant extension elements (MID, playout delay), then the IDs of those
     * written per packet (0: not negotiated) */
    unsigned char template[MAX_TEMPLATE];
    int template_length;
    int abs_send_time_id, audio_level_id, transport_cc_id;
    SendTimes *send_times;  /* the transport's, when transport-cc was negotiated */
    int picture_id_offset, tl0_offset, keyidx_offset;
    /* what was sent */
    long long packets, bytes, send_errors;
    uint32_t last_rtp_timestamp;
    unsigned long long last_ntp_timestamp;
    int last_sequence;  /* -1: nothing yet */
    PyObject *last_payload;
    PyObject *history[HISTORY];  /* the packets sent, serialised, unprotected; by sequence number % HISTORY */
    /* where it goes */
    int bound;
    int fd;
    struct sockaddr_storage address;
    socklen_t address_length;
    void *session;
    protect_fn protect;
    PyObject *keep;       /* what owns the session (pylibsrtp's Session), kept alive while bound */
    PyObject *dtls;       /* the DTLS transport; sending needs its _state to be `connected` */
    PyObject *connected;
    PyObject *nominated;  /* the ICE connection's nominated pairs; sending needs pair to be its component 1 */
    PyObject *pair;
    PyObject *output;     /* PYTHON: called with each serialised packet */
} Down;

static void unbind(Down *self) {
    if (self->fd >= 0)
        close(self->fd);
    self->fd = -1;
    self->bound = UNBOUND;
    self->session = NULL;
    self->protect = NULL;
    Py_CLEAR(self->keep);
    Py_CLEAR(self->dtls);
    Py_CLEAR(self->connected);
    Py_CLEAR(self->nominated);
    Py_CLEAR(self->pair);
    Py_CLEAR(self->output);
}

static int Down_init(Down *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"ssrc", "video", "rewriter", "counters", NULL};
    unsigned long ssrc;
    int video;
    PyObject *rewriter, *counters;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "kpO!O!", kwlist, &ssrc, &video, RewriterType, &rewriter,
                                     CountersType, &counters))
        return -1;
    self->ssrc = (uint32_t)ssrc;
    self->video = video;
    self->source_ssrc = -1;
    self->last_sequence = -1;
    self->fd = -1;
    Py_INCREF(rewriter);
    replace((PyObject **)&self->rewriter, rewriter);
    Py_INCREF(counters);
    replace((PyObject **)&self->counters, counters);
    return 0;
}

static int Down_traverse(Down *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE((PyObject *)self));
    Py_VISIT(self->rewriter);
    Py_VISIT(self->counters);
    Py_VISIT(self->send_times);
    Py_VISIT(self->keep);
    Py_VISIT(self->dtls);
    Py_VISIT(self->nominated);
    Py_VISIT(self->pair);
    Py_VISIT(self->output);
    return 0;
}

static int Down_clear(Down *self) {
    unbind(self);
    Py_CLEAR(self->rewriter);
    Py_CLEAR(self->counters);
    Py_CLEAR(self->send_times);
    Py_CLEAR(self->last_payload);
    for (int i = 0; i < HISTORY; i++)
        Py_CLEAR(self->history[i]);
    return 0;
}

static void Down_dealloc(Down *self) {
    PyObject_GC_UnTrack(self);
    Down_clear(self);
    free_object((PyObject *)self);
}

/* Whether the binding still holds: the DTLS transport connected and the pair still nominated. */
static int still_bound(Down *self) {
    if (self->bound == PYTHON)
        return 1;
    if (self->bound != NATIVE)
        return 0;
    PyObject *state = PyObject_GetAttr(self->dtls, str_state);
    if (state == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(state);
    if (state != self->connected)
        return 0;
    PyObject *pair = PyDict_GetItemWithError(self->nominated, one);
    if (pair == NULL)
        PyErr_Clear();
    return pair == self->pair;
}

/* Keep the packet for NACKs and protect it in place. The length to send (more than 0); 0 when
 * there is nothing to send from C (a PYTHON output took it; the session refused it, counted);
 * -1 with an exception set (the PYTHON output raised). */
static int keep_and_protect(Down *self, unsigned char *buffer, int length, unsigned sequence) {
    PyObject *kept = PyBytes_FromStringAndSize((char *)buffer, length);
    if (kept == NULL)
        return -1;
    replace(&self->history[sequence % HISTORY], kept);
    if (self->bound == PYTHON) {
        PyObject *result = PyObject_CallFunctionObjArgs(self->output, kept, NULL);
        if (result == NULL)
            return -1;
        Py_DECREF(result);
        return 0;
    }
    int protected_length = length;
    if (self->protect(self->session, buffer, &protected_length) != 0) {
        self->send_errors++;
        self->counters->send_errors++;
        return 0;
    }
    return protected_length;
}

/* A protected packet waiting for its sendto(). */
typedef struct {
    Down *down;
    unsigned char *buffer;
    int length;
    int error;
} Datagram;

/* Send the datagrams with the GIL released, once for them all: the system calls are most of the
 * time a packet costs, and other threads (the captions' and recordings' decoders) run meanwhile.
 * A datagram the socket refuses (a full buffer) is lost, as any UDP datagram may be: counted. */
static void send_all(Datagram *datagrams, Py_ssize_t count) {
    if (count == 0)
        return;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        Down *down = datagrams[i].down;
        ssize_t sent;
        do {
            sent = sendto(down->fd, datagrams[i].buffer, datagrams[i].length, 0, (struct sockaddr *)&down->address,
                          down->address_length);
        } while (sent < 0 && errno == EINTR);
        datagrams[i].error = sent < 0;
    }
    Py_END_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        datagrams[i].down->send_errors += datagrams[i].error;
        datagrams[i].down->counters->send_errors += datagrams[i].error;
    }
}

/* Write, keep, protect and count one packet into buffer (at least packet_room() bytes); the
 * payload is the source's, rewritten here when the VP8 offsets say so. *send_length: what is left
 * to send from buffer (0: nothing). 1: done; 0: dropped (older than the restart); -1: an
 * exception is set. */
static size_t packet_room(PyObject *payload, int padding) {
    return MAX_HEADER + BYTES_SIZE(payload) + padding + SRTP_TRAILER;
}

static int write_packet(Down *self, unsigned char *buffer, PyObject *payload, int marker, unsigned seq, uint32_t ts,
                        int audio_level, int padding, const uint32_t *csrc, int csrc_count, double now,
                        unsigned long long ntp, int *send_length) {
    unsigned out_seq;
    uint32_t out_ts;
    Py_ssize_t payload_length = BYTES_SIZE(payload);
    int length, extension_start, transport_sequence = -1;

    *send_length = 0;

    if (!rewrite(self->rewriter, seq, ts, now, &out_seq, &out_ts))
        return 0;
    if (self->send_times != NULL && self->transport_cc_id)
        transport_sequence = take(self->send_times, now);

    buffer[0] = 0x80 | (padding ? 0x20 : 0) | (csrc_count & 0x0F);
    buffer[1] = (marker ? 0x80 : 0) | (self->payload_type & 0x7F);
    buffer[2] = out_seq >> 8;
    buffer[3] = out_seq & 0xFF;
    buffer[4] = out_ts >> 24;
    buffer[5] = (out_ts >> 16) & 0xFF;
    buffer[6] = (out_ts >> 8) & 0xFF;
    buffer[7] = out_ts & 0xFF;
    buffer[8] = self->ssrc >> 24;
    buffer[9] = (self->ssrc >> 16) & 0xFF;
    buffer[10] = (self->ssrc >> 8) & 0xFF;
    buffer[11] = self->ssrc & 0xFF;
    length = 12;
    for (int i = 0; i < csrc_count; i++, length += 4) {
        buffer[length] = csrc[i] >> 24;
        buffer[length + 1] = (csrc[i] >> 16) & 0xFF;
        buffer[length + 2] = (csrc[i] >> 8) & 0xFF;
        buffer[length + 3] = csrc[i] & 0xFF;
    }
    extension_start = length;
    length += 4;
    memcpy(buffer + length, self->template, self->template_length);
    length += self->template_length;
    if (self->abs_send_time_id) {
        unsigned abs_send_time = (ntp >> 14) & 0xFFFFFF;
        buffer[length] = (self->abs_send_time_id << 4) | 2;
        buffer[length + 1] = abs_send_time >> 16;
        buffer[length + 2] = (abs_send_time >> 8) & 0xFF;
        buffer[length + 3] = abs_send_time & 0xFF;
        length += 4;
    }
    if (self->audio_level_id && audio_level >= 0) {
        buffer[length] = self->audio_level_id << 4;
        buffer[length + 1] = audio_level & 0xFF;
        length += 2;
    }
    if (transport_sequence >= 0) {
        buffer[length] = (self->transport_cc_id << 4) | 1;
        buffer[length + 1] = transport_sequence >> 8;
        buffer[length + 2] = transport_sequence & 0xFF;
        length += 3;
    }
    if (length == extension_start + 4) {  /* no extension: no extension header */
        length = extension_start;
    } else {
        while ((length - extension_start) % 4)
            buffer[length++] = 0;
        int words = (length - extension_start - 4) / 4;
        buffer[0] |= 0x10;
        buffer[extension_start] = 0xBE;
        buffer[extension_start + 1] = 0xDE;
        buffer[extension_start + 2] = words >> 8;
        buffer[extension_start + 3] = words & 0xFF;
    }
    memcpy(buffer + length, BYTES(payload), payload_length);
    int rewritten = self->video && (self->picture_id_offset || self->tl0_offset || self->keyidx_offset);
    if (rewritten)
        vp8_rewrite_in_place(buffer + length, payload_length, self->picture_id_offset, self->tl0_offset,
                             self->keyidx_offset);
    if (rewritten) {
        PyObject *sent_payload = PyBytes_FromStringAndSize((char *)buffer + length, payload_length);
        if (sent_payload == NULL)
            return -1;
        replace(&self->last_payload, sent_payload);
    } else {
        Py_INCREF(payload);
        replace(&self->last_payload, payload);
    }
    length += payload_length;
    if (padding) {
        memset(buffer + length, 0, padding - 1);
        buffer[length + padding - 1] = padding;
        length += padding;
    }
    int protected_length = keep_and_protect(self, buffer, length, out_seq);
    if (protected_length < 0)
        return -1;
    *send_length = protected_length;
    self->packets++;
    self->bytes += payload_length;
    self->last_rtp_timestamp = out_ts;
    self->last_ntp_timestamp = ntp;
    self->last_sequence = out_seq;
    self->counters->packets[self->video]++;
    self->counters->bytes[self->video] += payload_length;
    if (now >= self->next_sample) {
        self->sample_time[self->sample_next] = now;
        self->sample_bytes[self->sample_next] = self->bytes;
        self->sample_next = (self->sample_next + 1) % SAMPLES;
        if (self->samples < SAMPLES)
            self->samples++;
        self->next_sample = now + SAMPLE_INTERVAL;
    }
    return 1;
}

/* write_packet, then send it. */
static int forward(Down *self, PyObject *payload, int marker, unsigned seq, uint32_t ts, int audio_level,
                   int padding, const uint32_t *csrc, int csrc_count, double now, unsigned long long ntp) {
    unsigned char stack[STACK_PACKET];
    size_t need = packet_room(payload, padding);
    unsigned char *buffer = need <= sizeof stack ? stack : PyMem_Malloc(need);
    if (buffer == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Datagram datagram = {self, buffer, 0, 0};
    int done = write_packet(self, buffer, payload, marker, seq, ts, audio_level, padding, csrc, csrc_count, now, ntp,
                            &datagram.length);
    if (done > 0 && datagram.length > 0)
        send_all(&datagram, 1);
    if (buffer != stack)
        PyMem_Free(buffer);
    return done;
}

static PyObject *Down_forward(Down *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"payload", "marker", "seq", "ts", "audio_level", "padding", "csrc", "now", "ntp", NULL};
    PyObject *payload, *csrc_list;
    int marker, audio_level, padding;
    unsigned seq;
    unsigned long ts;
    double now;
    unsigned long long ntp;
    uint32_t csrc[15];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "SpIkiiOdK", kwlist, &payload, &marker, &seq, &ts, &audio_level,
                                     &padding, &csrc_list, &now, &ntp))
        return NULL;
    if (padding < 0 || padding > 255) {
        PyErr_SetString(PyExc_ValueError, "padding must be 0..255");
        return NULL;
    }
    Py_ssize_t csrc_count = PySequence_Size(csrc_list);
    if (csrc_count < 0)
        return NULL;
    if (csrc_count > 15) {
        PyErr_SetString(PyExc_ValueError, "at most 15 CSRCs");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < csrc_count; i++) {
        PyObject *item = PySequence_GetItem(csrc_list, i);
        if (item == NULL)
            return NULL;
        csrc[i] = (uint32_t)PyLong_AsUnsignedLongMask(item);
        Py_DECREF(item);
    }
    if (PyErr_Occurred())
        return NULL;
    if (!still_bound(self)) {
        PyErr_SetString(PyExc_ConnectionError, "the subscriber's transport is not connected");
        return NULL;
    }
    int done = forward(self, payload, marker, seq & 0xFFFF, (uint32_t)ts, audio_level, padding, csrc,
                       (int)csrc_count, now, ntp);
    if (done < 0)
        return NULL;
    if (done == 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(ik)", self->last_sequence, (unsigned long)self->last_rtp_timestamp);
}

static PyObject *Down_bind_socket(Down *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"keep", "session", "protect", "fd", "host", "port", "dtls", "connected", "nominated",
                             "pair", NULL};
    PyObject *keep, *dtls, *connected, *nominated, *pair;
    unsigned long long session, protect;
    int fd, port;
    const char *host;
    struct sockaddr_storage address;
    socklen_t address_length;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OKKisiOOO!O", kwlist, &keep, &session, &protect, &fd, &host, &port,
                                     &dtls, &connected, &PyDict_Type, &nominated, &pair))
        return NULL;
    memset(&address, 0, sizeof address);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&address;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&address;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        address_length = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        address_length = sizeof *v6;
    } else {
        PyErr_Format(PyExc_ValueError, "%s is not a numeric IPv4 or IPv6 address", host);
        return NULL;
    }
    if (session == 0 || protect == 0) {
        PyErr_SetString(PyExc_ValueError, "no SRTP session or function");
        return NULL;
    }
    int own = dup(fd);
    if (own < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    unbind(self);
    self->fd = own;
    self->address = address;
    self->address_length = address_length;
    self->session = (void *)(uintptr_t)session;
    self->protect = (protect_fn)(uintptr_t)protect;
    Py_INCREF(keep);
    self->keep = keep;
    Py_INCREF(dtls);
    self->dtls = dtls;
    Py_INCREF(connected);
    self->connected = connected;
    Py_INCREF(nominated);
    self->nominated = nominated;
    Py_INCREF(pair);
    self->pair = pair;
    self->bound = NATIVE;
    Py_RETURN_NONE;
}

static PyObject *Down_bind_output(Down *self, PyObject *output) {
    if (!PyCallable_Check(output)) {
        PyErr_SetString(PyExc_TypeError, "the output must be callable");
        return NULL;
    }
    unbind(self);
    Py_INCREF(output);
    self->output = output;
    self->bound = PYTHON;
    Py_RETURN_NONE;
}

static PyObject *Down_unbind(Down *self, PyObject *unused) {
    unbind(self);
    Py_RETURN_NONE;
}

static PyObject *Down_sent(Down *self, PyObject *arg) {
    long sequence = PyLong_AsLong(arg);
    if (sequence == -1 && PyErr_Occurred())
        return NULL;
    PyObject *kept = self->history[(sequence & 0xFFFF) % HISTORY];
    if (kept == NULL || BYTES_SIZE(kept) < 4)
        Py_RETURN_NONE;
    unsigned char *p = BYTES(kept);
    if ((unsigned)((p[2] << 8) | p[3]) != (unsigned)(sequence & 0xFFFF))
        Py_RETURN_NONE;
    Py_INCREF(kept);
    return kept;
}

/* The payload bytes forwarded until the window that starts at `horizon`: the count noted last at or
 * before it, 0 when the track began within the window, None when nothing was noted within it. */
static PyObject *Down_window_base(Down *self, PyObject *arg) {
    double horizon = PyFloat_AsDouble(arg);
    if (horizon == -1.0 && PyErr_Occurred())
        return NULL;
    int newest = (self->sample_next + SAMPLES - 1) % SAMPLES;
    if (!self->samples || self->sample_time[newest] <= horizon)
        Py_RETURN_NONE;
    for (int k = 1; k < self->samples; k++) {
        int i = (newest + SAMPLES - k) % SAMPLES;
        if (self->sample_time[i] <= horizon)
            return PyLong_FromLongLong(self->sample_bytes[i]);
    }
    /* every count noted is within the window: the track began in it, unless the ring is full (a
     * window longer than the ring holds), where its oldest count is the nearest there is */
    return PyLong_FromLongLong(self->samples < SAMPLES ? 0 : self->sample_bytes[self->sample_next]);
}

static PyObject *Down_sent_slot(Down *self, PyObject *arg) {
    long slot = PyLong_AsLong(arg);
    if (slot == -1 && PyErr_Occurred())
        return NULL;
    if (slot < 0 || slot >= HISTORY || self->history[slot] == NULL)
        Py_RETURN_NONE;
    Py_INCREF(self->history[slot]);
    return self->history[slot];
}

static PyObject *Down_set_template(Down *self, PyObject *args) {
    Py_buffer constant;
    int abs_send_time_id, audio_level_id, transport_cc_id;
    if (!PyArg_ParseTuple(args, "y*iii", &constant, &abs_send_time_id, &audio_level_id, &transport_cc_id))
        return NULL;
    if (constant.len > MAX_TEMPLATE) {
        PyBuffer_Release(&constant);
        PyErr_SetString(PyExc_ValueError, "the constant header extensions are too long");
        return NULL;
    }
    memcpy(self->template, constant.buf, constant.len);
    self->template_length = (int)constant.len;
    PyBuffer_Release(&constant);
    self->abs_send_time_id = abs_send_time_id & 0x0F;
    self->audio_level_id = audio_level_id & 0x0F;
    self->transport_cc_id = transport_cc_id & 0x0F;
    Py_RETURN_NONE;
}

static PyObject *Down_set_vp8(Down *self, PyObject *args) {
    if (!PyArg_ParseTuple(args, "iii", &self->picture_id_offset, &self->tl0_offset, &self->keyidx_offset))
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Down_get_source_ssrc(Down *self, void *closure) {
    if (self->source_ssrc < 0)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(self->source_ssrc);
}

static int Down_set_source_ssrc(Down *self, PyObject *value, void *closure) {
    if (value == NULL || value == Py_None) {
        self->source_ssrc = -1;
        return 0;
    }
    unsigned long ssrc = PyLong_AsUnsignedLong(value);
    if (PyErr_Occurred())
        return -1;
    self->source_ssrc = (long long)(ssrc & 0xFFFFFFFF);
    return 0;
}

static PyObject *Down_get_send_times(Down *self, void *closure) {
    if (self->send_times == NULL)
        Py_RETURN_NONE;
    Py_INCREF((PyObject *)self->send_times);
    return (PyObject *)self->send_times;
}

static int Down_set_send_times(Down *self, PyObject *value, void *closure) {
    if (value != NULL && value != Py_None && !PyObject_TypeCheck(value, SendTimesType)) {
        PyErr_SetString(PyExc_TypeError, "send_times must be a SendTimes or None");
        return -1;
    }
    PyObject *old = (PyObject *)self->send_times;
    self->send_times = (value == NULL || value == Py_None) ? NULL : (SendTimes *)value;
    Py_XINCREF((PyObject *)self->send_times);
    Py_XDECREF(old);
    return 0;
}

static PyObject *Down_get_last_payload(Down *self, void *closure) {
    if (self->last_payload == NULL)
        Py_RETURN_NONE;
    Py_INCREF(self->last_payload);
    return self->last_payload;
}

static PyObject *Down_get_last_sequence(Down *self, void *closure) {
    if (self->last_sequence < 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->last_sequence);
}

static PyObject *Down_get_bound(Down *self, void *closure) {
    static const char *names[] = {"", "native", "python"};
    return PyUnicode_FromString(names[self->bound]);
}

static PyMethodDef Down_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))Down_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(payload, marker, seq, ts, audio_level, padding, csrc, now, ntp): rewrite, write, send and count a "
     "packet of the source; its (seq, ts) as sent, or None when older than the restart. audio_level: the "
     "extension's byte (V bit and level), -1 for none. Raises ConnectionError when the transport is gone."},
    {"bind_socket", (PyCFunction)(void (*)(void))Down_bind_socket, METH_VARARGS | METH_KEYWORDS,
     "bind_socket(keep, session, protect, fd, host, port, dtls, connected, nominated, pair): send through this "
     "libsrtp session and a duplicate of this socket while dtls._state is connected and nominated[1] is pair"},
    {"bind_output", (PyCFunction)Down_bind_output, METH_O, "bind_output(callable): send each packet through it"},
    {"unbind", (PyCFunction)Down_unbind, METH_NOARGS, "send nothing more"},
    {"sent", (PyCFunction)Down_sent, METH_O, "sent(seq): the packet sent with that sequence number, or None"},
    {"sent_slot", (PyCFunction)Down_sent_slot, METH_O, "sent_slot(n): the packet kept in slot n (seq % 128), or None"},
    {"window_base", (PyCFunction)Down_window_base, METH_O,
     "window_base(horizon): the payload bytes forwarded until horizon, as noted every 0.1 s at most (0: the "
     "track began after it), or None when nothing was forwarded since"},
    {"set_template", (PyCFunction)Down_set_template, METH_VARARGS,
     "set_template(constant, abs_send_time_id, audio_level_id, transport_cc_id): the header extensions"},
    {"set_vp8", (PyCFunction)Down_set_vp8, METH_VARARGS,
     "set_vp8(picture_id_offset, tl0_offset, keyidx_offset): carry the VP8 descriptor on by these"},
    {NULL}};

static PyMemberDef Down_members[] = {
    {"ssrc", T_UINT, offsetof(Down, ssrc), READONLY, NULL},
    {"payload_type", T_INT, offsetof(Down, payload_type), 0, NULL},
    {"fast", T_BOOL, offsetof(Down, fast), 0, NULL},
    {"packets", T_LONGLONG, offsetof(Down, packets), READONLY, NULL},
    {"bytes", T_LONGLONG, offsetof(Down, bytes), READONLY, NULL},
    {"send_errors", T_LONGLONG, offsetof(Down, send_errors), READONLY, NULL},
    {"last_rtp_timestamp", T_UINT, offsetof(Down, last_rtp_timestamp), READONLY, NULL},
    {"last_ntp_timestamp", T_ULONGLONG, offsetof(Down, last_ntp_timestamp), READONLY, NULL},
    {"rewriter", T_OBJECT, offsetof(Down, rewriter), READONLY, NULL},
    {NULL}};

static PyGetSetDef Down_getset[] = {
    {"source_ssrc", (getter)Down_get_source_ssrc, (setter)Down_set_source_ssrc,
     "the source forwarded now (None: none, waiting for a keyframe or paused)"},
    {"send_times", (getter)Down_get_send_times, (setter)Down_set_send_times,
     "the transport's transport-wide sequence numbers (None: not negotiated)"},
    {"last_payload", (getter)Down_get_last_payload, NULL, "the latest payload sent, as sent"},
    {"last_sequence", (getter)Down_get_last_sequence, NULL, "the latest sequence number sent"},
    {"bound", (getter)Down_get_bound, NULL, "'native', 'python' or '' (not bound)"},
    {NULL}};

static PyTypeObject *DownType;

static PyType_Slot Down_slots[] = {
    {Py_tp_doc, (void *)"Down(ssrc, video, rewriter, counters): one subscriber's copy of a track, as sent."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, (initproc)Down_init},
    {Py_tp_dealloc, (destructor)Down_dealloc},
    {Py_tp_traverse, (traverseproc)Down_traverse},
    {Py_tp_clear, (inquiry)Down_clear},
    {Py_tp_methods, Down_methods},
    {Py_tp_members, Down_members},
    {Py_tp_getset, Down_getset},
    {0, NULL}};

static PyType_Spec Down_spec = {"appliance.sfu._fastpath.Down", sizeof(Down), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, Down_slots};

/* ---------- fanout ---------- */

static PyObject *fanout(PyObject *module, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"downs", "payload", "marker", "seq", "ts", "ssrc", "audio_level", "padding", "keyframe",
                             "now", "ntp", NULL};
    PyObject *downs, *payload;
    int marker, audio_level, padding, keyframe;
    unsigned seq;
    unsigned long ts, ssrc;
    double now;
    unsigned long long ntp;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!SpIkkiipdK", kwlist, &PyTuple_Type, &downs, &payload, &marker,
                                     &seq, &ts, &ssrc, &audio_level, &padding, &keyframe, &now, &ntp))
        return NULL;
    if (padding < 0 || padding > 255) {
        PyErr_SetString(PyExc_ValueError, "padding must be 0..255");
        return NULL;
    }
    Py_ssize_t count = PyTuple_Size(downs);
    size_t room = packet_room(payload, padding);
    unsigned char *buffers = count ? PyMem_Malloc(room * count) : NULL;
    Datagram *datagrams = count ? PyMem_New(Datagram, count) : NULL;
    PyObject *left = PyList_New(0);
    Py_ssize_t pending = 0;
    if (count && (buffers == NULL || datagrams == NULL)) {
        PyErr_NoMemory();
        goto error;
    }
    if (left == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < count; i++) {
        Down *down = (Down *)PyTuple_GetItem(downs, i);
        if (!PyObject_TypeCheck((PyObject *)down, DownType)) {
            PyErr_SetString(PyExc_TypeError, "downs must hold Down objects");
            goto error;
        }
        int done = 0;
        if (down->fast && !keyframe && down->source_ssrc == (long long)(ssrc & 0xFFFFFFFF) && down->packets > 0 &&
            still_bound(down)) {
            Datagram *datagram = &datagrams[pending];
            datagram->down = down;
            datagram->buffer = buffers + room * pending;
            done = write_packet(down, datagram->buffer, payload, marker, seq & 0xFFFF, (uint32_t)ts, audio_level,
                                padding, NULL, 0, now, ntp, &datagram->length);
            if (done < 0) {  /* left to Python, which meets the same error and handles it */
                PyErr_Clear();
                done = 0;
            } else if (done > 0 && datagram->length > 0) {
                pending++;
            }
            /* done == 0 after a rewrite refused the packet: Python's rewrite refuses it too */
        }
        if (!done) {
            PyObject *index = PyLong_FromSsize_t(i);
            if (index == NULL || PyList_Append(left, index) < 0) {
                Py_XDECREF(index);
                goto error;
            }
            Py_DECREF(index);
        }
    }
    send_all(datagrams, pending);
    PyMem_Free(buffers);
    PyMem_Free(datagrams);
    return left;

error:
    send_all(datagrams, pending);  /* what was written is counted as sent: send it */
    PyMem_Free(buffers);
    PyMem_Free(datagrams);
    Py_XDECREF(left);
    return NULL;
}

static PyMethodDef module_methods[] = {
    {"fanout", (PyCFunction)(void (*)(void))fanout, METH_VARARGS | METH_KEYWORDS,
     "fanout(downs, payload, marker, seq, ts, ssrc, audio_level, padding, keyframe, now, ntp): forward a packet "
     "of source ssrc to each of downs (a tuple of Down) in the steady state; the positions of those left to "
     "Python"},
    {"vp8_rewrite", vp8_rewrite, METH_VARARGS,
     "vp8_rewrite(payload, picture_id_offset, tl0_offset, keyidx_offset): the payload with its VP8 descriptor "
     "carried on"},
    {NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath", "The SFU's per-subscriber forwarding path in C (see the source).", -1,
    module_methods};

PyMODINIT_FUNC PyInit__fastpath(void) {
    PyType_Spec *specs[] = {&Counters_spec, &SendTimes_spec, &Rewriter_spec, &Down_spec};
    PyTypeObject **types[] = {&CountersType, &SendTimesType, &RewriterType, &DownType};
    const char *names[] = {"Counters", "SendTimes", "Rewriter", "Down"};
    for (int i = 0; i < 4; i++)
        if ((*types[i] = (PyTypeObject *)PyType_FromSpec(specs[i])) == NULL)
            return NULL;
    str_state = PyUnicode_InternFromString("_state");
    one = PyLong_FromLong(1);
    if (str_state == NULL || one == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    for (int i = 0; i < 4; i++) {
        Py_INCREF((PyObject *)*types[i]);
        if (PyModule_AddObject(m, names[i], (PyObject *)*types[i]) < 0) {
            Py_DECREF((PyObject *)*types[i]);
            Py_DECREF(m);
            return NULL;
        }
    }
    if (PyModule_AddIntConstant(m, "HISTORY", HISTORY) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
