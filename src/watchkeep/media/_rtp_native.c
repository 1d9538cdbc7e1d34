/* H.264 (RFC 6184) and H.265 (RFC 7798) RTP depacketizing in C: the per-packet work of a
 * recording server's camera connections, off the Python path.
 *
 * The same behaviour as watchkeep.media._rtp_h26x.PyH26xDepacketizer, step for step (its
 * docstrings say what each step means; tests/media/test_rtp_h26x.py feeds both the same
 * packets, fuzzed ones among them, and compares the pictures, their damage, the counters
 * and the problem named). Python is called once per picture (to make its AccessUnit), never
 * per packet.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#define MAX_ACCESS_UNIT (32 * 1024 * 1024)

typedef struct {
    PyObject_HEAD
    int h264;
    int header_size;          /* of the NAL unit header: 1 (H.264) or 2 (H.265) */
    PyObject *codec;          /* "H264" or "H265" */
    PyObject *unit_type;      /* AccessUnit(timestamp, nals, damaged) */
    Py_ssize_t units, damaged, bad_packets;
    PyObject *last_problem;   /* str or None */
    /* the access unit being rebuilt */
    int in_unit;
    uint32_t timestamp;
    PyObject *nals;           /* list of bytes */
    int unit_damaged;
    Py_ssize_t size;
    long next_sequence;       /* -1: none yet */
    /* the NAL unit an FU is rebuilding: its header, then the fragments' data */
    int in_fragment;
    char *fragment;
    Py_ssize_t fragment_length, fragment_capacity;
} Depacketizer;

/* Why a packet was refused (the Python implementation's _BadPacket). */
static const char *BAD_EMPTY = "an empty RTP payload";
static const char *BAD_LENGTH_CUT = "an aggregation packet cut inside a length";
static const char *BAD_LENGTH = "an aggregation packet with a wrong NAL unit length";
static const char *BAD_NO_DATA = "a fragmentation unit with no data";
static const char *BAD_TOO_BIG = "a picture over 32 MiB";

static int set_problem(Depacketizer *self, PyObject *problem) {
    if (problem == NULL)
        return -1;
    Py_SETREF(self->last_problem, problem);
    return 0;
}

static int set_problem_text(Depacketizer *self, const char *text) {
    return set_problem(self, PyUnicode_FromString(text));
}

static int fragment_add(Depacketizer *self, const unsigned char *data, Py_ssize_t length) {
    Py_ssize_t needed = self->fragment_length + length;
    if (needed > self->fragment_capacity) {
        Py_ssize_t capacity = self->fragment_capacity ? self->fragment_capacity : 65536;
        while (capacity < needed)
            capacity *= 2;
        char *grown = PyMem_Realloc(self->fragment, (size_t)capacity);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->fragment = grown;
        self->fragment_capacity = capacity;
    }
    memcpy(self->fragment + self->fragment_length, data, (size_t)length);
    self->fragment_length = needed;
    return 0;
}

/* The access unit done: appended to ``done`` as an AccessUnit. */
static int finish(Depacketizer *self, PyObject *done) {
    PyObject *unit = PyObject_CallFunction(
        self->unit_type, "kOO", (unsigned long)self->timestamp, self->nals,
        self->unit_damaged ? Py_True : Py_False);
    if (unit == NULL)
        return -1;
    self->units++;
    if (self->unit_damaged)
        self->damaged++;
    self->in_unit = 0;
    self->in_fragment = 0;
    self->size = 0;
    Py_CLEAR(self->nals);
    int failed = PyList_Append(done, unit);
    Py_DECREF(unit);
    return failed;
}

/* 0: taken; 1: a bad packet (``*bad`` says why, or ``*bad_object`` for one that needs a
 * formatted text); -1: a Python error. */
static int count(Depacketizer *self, Py_ssize_t size, const char **bad) {
    self->size += size;
    if (self->size > MAX_ACCESS_UNIT) {
        *bad = BAD_TOO_BIG;
        return 1;
    }
    return 0;
}

static int add_nal(Depacketizer *self, const unsigned char *nal, Py_ssize_t length,
                   const char **bad) {
    if (count(self, length, bad))
        return 1;
    if (length == 0)
        return 0;
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)nal, length);
    if (bytes == NULL)
        return -1;
    int failed = PyList_Append(self->nals, bytes);
    Py_DECREF(bytes);
    return failed ? -1 : 0;
}

static int take(Depacketizer *self, const unsigned char *payload, Py_ssize_t length,
                const char **bad, PyObject **bad_object) {
    int h264 = self->h264;
    int header_size = self->header_size;
    if (length < header_size) {
        *bad = BAD_EMPTY;
        return 1;
    }
    int kind = h264 ? payload[0] & 0x1F : (payload[0] >> 1) & 0x3F;
    int fragment_kind = h264 ? 28 : 49;
    int aggregate_kind = h264 ? 24 : 48;
    int single = h264 ? kind < 24 : kind < 48;
    if (kind == fragment_kind && length > header_size + 1) {
        int fu = payload[header_size];
        if (!(fu & 0xC0) && self->in_fragment) {
            /* the common case, a middle fragment */
            if (fragment_add(self, payload + header_size + 1, length - header_size - 1))
                return -1;
            return count(self, length, bad);
        }
    }
    if (single) {
        self->in_fragment = 0;
        return add_nal(self, payload, length, bad);
    }
    if (kind == aggregate_kind) {
        self->in_fragment = 0;
        Py_ssize_t pos = header_size;
        while (pos < length) {
            if (pos + 2 > length) {
                *bad = BAD_LENGTH_CUT;
                return 1;
            }
            Py_ssize_t size = (payload[pos] << 8) | payload[pos + 1];
            pos += 2;
            if (size == 0 || pos + size > length) {
                *bad = BAD_LENGTH;
                return 1;
            }
            int result = add_nal(self, payload + pos, size, bad);
            if (result)
                return result;
            pos += size;
        }
        return 0;
    }
    if (kind == fragment_kind) {
        if (length < header_size + 2) {
            *bad = BAD_NO_DATA;
            return 1;
        }
        int fu = payload[header_size];
        int start = fu & 0x80, end = fu & 0x40;
        unsigned char head[2];
        if (h264) {
            head[0] = (unsigned char)((payload[0] & 0xE0) | (fu & 0x1F));
        } else {
            head[0] = (unsigned char)((payload[0] & 0x81) | ((fu & 0x3F) << 1));
            head[1] = payload[1];
        }
        const unsigned char *data = payload + header_size + 1;
        Py_ssize_t data_length = length - header_size - 1;
        if (start) {
            if (self->in_fragment)
                self->unit_damaged = 1; /* the previous fragmented NAL unit lost its end */
            self->in_fragment = 1;
            self->fragment_length = 0;
            if (fragment_add(self, head, header_size) || fragment_add(self, data, data_length))
                return -1;
        } else if (!self->in_fragment) {
            self->unit_damaged = 1; /* its start was lost */
            return 0;
        } else if (fragment_add(self, data, data_length)) {
            return -1;
        }
        int result = count(self, data_length, bad);
        if (result)
            return result;
        if (end) {
            PyObject *nal = PyBytes_FromStringAndSize(self->fragment, self->fragment_length);
            if (nal == NULL)
                return -1;
            int failed = PyList_Append(self->nals, nal);
            Py_DECREF(nal);
            if (failed)
                return -1;
            self->in_fragment = 0;
        }
        return 0;
    }
    *bad_object = PyUnicode_FromFormat(
        "RTP packets of type %d (interleaved or unknown packetization); fix: set the "
        "camera's RTP packetization mode to 1 (non-interleaved)",
        kind);
    return *bad_object == NULL ? -1 : 1;
}

static int push(Depacketizer *self, const unsigned char *payload, Py_ssize_t length,
                long sequence, uint32_t timestamp, int marker, PyObject *done) {
    long expected = self->next_sequence;
    self->next_sequence = (sequence + 1) & 0xFFFF;
    int lost = expected >= 0 && sequence != expected;
    if (self->in_unit && timestamp != self->timestamp) {
        /* the marker of the previous picture never came (or was lost with its packet) */
        self->unit_damaged = self->unit_damaged || lost || self->in_fragment;
        if (finish(self, done))
            return -1;
    }
    if (!self->in_unit) {
        self->nals = PyList_New(0);
        if (self->nals == NULL)
            return -1;
        self->in_unit = 1;
        self->timestamp = timestamp;
        self->unit_damaged = 0;
        self->size = 0;
        self->in_fragment = 0;
    }
    if (lost) {
        self->unit_damaged = 1;
        self->in_fragment = 0;
        if (set_problem_text(self, "packets were lost"))
            return -1;
    }
    const char *bad = NULL;
    PyObject *bad_object = NULL;
    int result = take(self, payload, length, &bad, &bad_object);
    if (result < 0)
        return -1;
    if (result > 0) {
        self->bad_packets++;
        if (set_problem(self, bad_object ? bad_object : PyUnicode_FromString(bad)))
            return -1;
        self->unit_damaged = 1;
        self->in_fragment = 0;
    }
    if (marker) {
        if (self->in_fragment)
            self->unit_damaged = 1;
        if (finish(self, done))
            return -1;
    }
    return 0;
}

/* :meth:`feed` of one RTP packet's bytes: 1 when it is one of ``payload_type``, 0 when not. */
static int feed(Depacketizer *self, const unsigned char *data, Py_ssize_t end,
                int payload_type, PyObject *done) {
    if (end < 12)
        return 0;
    int first = data[0], second = data[1];
    if (first >> 6 != 2 || (second & 0x7F) != payload_type)
        return 0;
    long sequence = (data[2] << 8) | data[3];
    uint32_t timestamp = ((uint32_t)data[4] << 24) | ((uint32_t)data[5] << 16) |
                         ((uint32_t)data[6] << 8) | (uint32_t)data[7];
    Py_ssize_t start = 12 + 4 * (first & 0x0F);
    if (first & 0x10) { /* a header extension: 16-bit profile, 16-bit length in words */
        if (end < start + 4)
            return 0;
        start += 4 + 4 * ((data[start + 2] << 8) | data[start + 3]);
    }
    if (first & 0x20) /* padding: its length is the last byte */
        end -= data[end - 1];
    if (start > end)
        return 0;
    return push(self, data + start, end - start, sequence, timestamp, second & 0x80, done) < 0
               ? -1
               : 1;
}

static PyObject *Depacketizer_feed(Depacketizer *self, PyObject *args) {
    Py_buffer buffer;
    int payload_type;
    if (!PyArg_ParseTuple(args, "y*i:feed", &buffer, &payload_type))
        return NULL;
    PyObject *done = PyList_New(0);
    int result = done == NULL ? -1 : feed(self, buffer.buf, buffer.len, payload_type, done);
    PyBuffer_Release(&buffer);
    if (result < 0) {
        Py_XDECREF(done);
        return NULL;
    }
    if (result == 0) {
        Py_DECREF(done);
        Py_RETURN_NONE;
    }
    return done;
}

static PyObject *Depacketizer_feed_interleaved(Depacketizer *self, PyObject *args) {
    Py_buffer buffer;
    Py_ssize_t pos, end;
    int channel, payload_type;
    if (!PyArg_ParseTuple(args, "y*nnii:feed_interleaved", &buffer, &pos, &end, &channel,
                          &payload_type))
        return NULL;
    const unsigned char *data = buffer.buf;
    if (pos < 0 || end > buffer.len || pos > end) {
        PyBuffer_Release(&buffer);
        PyErr_SetString(PyExc_ValueError, "pos and end must lie within the data");
        return NULL;
    }
    PyObject *done = PyList_New(0);
    if (done == NULL) {
        PyBuffer_Release(&buffer);
        return NULL;
    }
    while (end - pos >= 4 && data[pos] == 0x24 && data[pos + 1] == channel) {
        Py_ssize_t length = (data[pos + 2] << 8) | data[pos + 3];
        Py_ssize_t stop = pos + 4 + length;
        if (stop > end)
            break;
        if (feed(self, data + pos + 4, length, payload_type, done) < 0) {
            PyBuffer_Release(&buffer);
            Py_DECREF(done);
            return NULL;
        }
        pos = stop;
    }
    PyBuffer_Release(&buffer);
    return Py_BuildValue("(Nn)", done, pos);
}

static PyObject *Depacketizer_push(Depacketizer *self, PyObject *packet) {
    PyObject *payload = PyObject_GetAttrString(packet, "payload");
    PyObject *sequence = PyObject_GetAttrString(packet, "sequence");
    PyObject *timestamp = PyObject_GetAttrString(packet, "timestamp");
    PyObject *marker = PyObject_GetAttrString(packet, "marker");
    PyObject *done = NULL;
    Py_buffer buffer = {0};
    int have_buffer = 0;
    if (payload == NULL || sequence == NULL || timestamp == NULL || marker == NULL)
        goto out;
    long seq = PyLong_AsLong(sequence);
    unsigned long ts = PyLong_AsUnsignedLongMask(timestamp);
    int mark = PyObject_IsTrue(marker);
    if (PyErr_Occurred() || mark < 0)
        goto out;
    if (PyObject_GetBuffer(payload, &buffer, PyBUF_SIMPLE) < 0)
        goto out;
    have_buffer = 1;
    done = PyList_New(0);
    if (done != NULL &&
        push(self, buffer.buf, buffer.len, seq & 0xFFFF, (uint32_t)ts, mark, done) < 0)
        Py_CLEAR(done);
out:
    if (have_buffer)
        PyBuffer_Release(&buffer);
    Py_XDECREF(payload);
    Py_XDECREF(sequence);
    Py_XDECREF(timestamp);
    Py_XDECREF(marker);
    return done;
}

static int Depacketizer_init(Depacketizer *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"codec", "unit_type", NULL};
    PyObject *codec, *unit_type;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "UO:Depacketizer", keywords, &codec,
                                     &unit_type))
        return -1;
    if (PyUnicode_CompareWithASCIIString(codec, "H264") == 0) {
        self->h264 = 1;
    } else if (PyUnicode_CompareWithASCIIString(codec, "H265") == 0) {
        self->h264 = 0;
    } else {
        PyErr_Format(PyExc_ValueError, "not an H.264 or H.265 codec: %R", codec);
        return -1;
    }
    self->header_size = self->h264 ? 1 : 2;
    Py_INCREF(codec);
    Py_XSETREF(self->codec, codec);
    Py_INCREF(unit_type);
    Py_XSETREF(self->unit_type, unit_type);
    Py_INCREF(Py_None);
    Py_XSETREF(self->last_problem, Py_None);
    Py_CLEAR(self->nals);
    self->units = self->damaged = self->bad_packets = 0;
    self->in_unit = self->in_fragment = 0;
    self->next_sequence = -1;
    self->fragment_length = 0;
    return 0;
}

static int Depacketizer_traverse(Depacketizer *self, visitproc visit, void *arg) {
    Py_VISIT(self->unit_type);
    Py_VISIT(self->nals);
    return 0;
}

static int Depacketizer_clear(Depacketizer *self) {
    Py_CLEAR(self->codec);
    Py_CLEAR(self->unit_type);
    Py_CLEAR(self->last_problem);
    Py_CLEAR(self->nals);
    return 0;
}

static void Depacketizer_dealloc(Depacketizer *self) {
    PyObject_GC_UnTrack(self);
    Depacketizer_clear(self);
    PyMem_Free(self->fragment);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Depacketizer_methods[] = {
    {"feed", (PyCFunction)Depacketizer_feed, METH_VARARGS,
     "feed(data, payload_type): the access units one RTP packet completes, or None if it "
     "is not an RTP packet of payload_type"},
    {"feed_interleaved", (PyCFunction)Depacketizer_feed_interleaved, METH_VARARGS,
     "feed_interleaved(data, pos, end, channel, payload_type): the access units the whole "
     "interleaved packets on channel from pos complete, and where the first that is not "
     "whole or not on channel begins"},
    {"push", (PyCFunction)Depacketizer_push, METH_O,
     "push(packet): the access units an RtpPacket completes"},
    {NULL}};

static PyMemberDef Depacketizer_members[] = {
    {"codec", T_OBJECT, offsetof(Depacketizer, codec), READONLY, NULL},
    {"units", T_PYSSIZET, offsetof(Depacketizer, units), READONLY, NULL},
    {"damaged", T_PYSSIZET, offsetof(Depacketizer, damaged), READONLY, NULL},
    {"bad_packets", T_PYSSIZET, offsetof(Depacketizer, bad_packets), READONLY, NULL},
    {"last_problem", T_OBJECT, offsetof(Depacketizer, last_problem), READONLY, NULL},
    {NULL}};

static PyTypeObject DepacketizerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "watchkeep.media._rtp_native.Depacketizer",
    .tp_doc = "Rebuild the access units of one H.264 or H.265 RTP stream, in arrival order.",
    .tp_basicsize = sizeof(Depacketizer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Depacketizer_init,
    .tp_dealloc = (destructor)Depacketizer_dealloc,
    .tp_traverse = (traverseproc)Depacketizer_traverse,
    .tp_clear = (inquiry)Depacketizer_clear,
    .tp_methods = Depacketizer_methods,
    .tp_members = Depacketizer_members,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rtp_native",
    "H.264/H.265 RTP depacketizing in C (see watchkeep.media._rtp_h26x).", -1, NULL};

PyMODINIT_FUNC PyInit__rtp_native(void) {
    if (PyType_Ready(&DepacketizerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&DepacketizerType);
    if (PyModule_AddObject(m, "Depacketizer", (PyObject *)&DepacketizerType) < 0) {
        Py_DECREF(&DepacketizerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
