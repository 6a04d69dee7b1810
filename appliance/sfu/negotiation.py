"""The SFU's half of a participant's session: aiortc's RTCPeerConnection, made to negotiate
what passthrough forwarding needs.

* Upstream, exactly one codec the SFU can forward per published track (VP8 before H.264 for
  video, Opus for audio), so a publisher cannot switch codecs under its subscribers.
* Downstream, the server's offers keep every payload type and header-extension ID the session
  already uses: aiortc would otherwise re-offer its own numbering, which collides inside the
  BUNDLE group with the browser's (Chrome rejects such an offer) and would re-map the
  publisher's own m-lines.
* Opus with in-band FEC (``OPUS_PARAMETERS``) in every answer and offer: a browser sends FEC
  when the other side's description asks for it. The SFU forwards without decoding, so FEC
  reaches subscribers as the publisher encoded it (their decoders recover a lost packet from the
  next one). Not DTX: with it, Firefox's recorded microphone came out a quarter short (a
  recording test), and captions and the recorder would have to be shown to cope with its gaps.
* One DTLS role for the one bundled transport, and it never changes once negotiated (RFC 8842:
  the BUNDLE group's tagged m-line sets it). Firefox answers a renegotiation with ``a=setup``
  per m-line (``passive`` on the old ones, ``active`` on the new); aiortc applies each m-line's
  value to the shared transport, so the last one would turn the SFU from DTLS client into
  server mid-handshake and the participant would get no media at all.
* Simulcast from browsers (RFC 8853, 8851): a video m-line offered with ``a=rid:… send`` and
  ``a=simulcast:send …`` is answered with the same rids as ``recv`` and the rtp-stream-id /
  repaired-rtp-stream-id header extensions, and every later description the SFU writes keeps
  them (a re-offer without them would turn the browser's simulcast off). aiortc knows neither
  attribute and negotiates only the extensions it knows, so both are added around it.
* An m-line the SFU stopped sending on (``inactive``) is offered without ``a=msid``: the same
  publisher's track may come back on a new m-line (someone back from a breakout room publishes
  the same browser track again, under the same participant id), and Chrome rejects an offer in
  which two m-lines carry one msid.
* Transport-wide congestion control (``twcc.py``) wherever the browser offers it: the
  extension and the ``transport-cc`` feedback are answered and kept, so the browser estimates its
  uplink from the SFU's feedback rather than from aiortc's REMB (slow to ramp up, and fooled by a
  busy event loop). The other way too: the video offered to a subscriber offers transport-cc,
  and the feedback its browser sends shows the SFU the queue on its downlink (allocation.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.rtcpeerconnection import is_codec_compatible
from aiortc.rtcrtpparameters import (
    RTCRtpCodecCapability,
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtcpFeedback,
)

from . import aiortc_private
from .forwarder import PLAYOUT_DELAY_URI
from .twcc import TRANSPORT_CC_URI
from .errors import SfuError

FORWARDABLE = {"audio": ("audio/opus",), "video": ("video/VP8", "video/H264")}
DYNAMIC_PAYLOAD_TYPES = (*range(96, 128), *range(35, 64))
EXTENSION_IDS = range(1, 15)
# Opus fmtp parameters the SFU asks every browser for (RFC 7587): in-band FEC, a lost 20 ms frame
# recovered from the next packet.
OPUS_PARAMETERS = {"useinbandfec": 1}
# The a=setup a remote description must carry to keep the SFU's negotiated DTLS role.
REMOTE_SETUP = {"client": "passive", "server": "active"}
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
SIMULCAST_EXTENSIONS = (RID_URI, REPAIRED_RID_URI)
TRANSPORT_CC = RTCRtcpFeedback(type="transport-cc")


def _is_forwardable(kind: str, codec: RTCRtpCodecParameters) -> bool:
    return codec.mimeType.lower() in (m.lower() for m in FORWARDABLE.get(kind, ()))


def parse_description(sdp: str) -> aiortc_sdp.SessionDescription:
    """Parse SDP, turning aiortc's assorted parse failures into one typed error."""
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise SfuError("invalid_sdp", "the SDP must be a string starting with 'v=0'")
    try:
        return aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc raises assertion, value, key and index errors alike
        raise SfuError("invalid_sdp", f"the SDP cannot be parsed: {exc!r}") from None


def check_offer(sdp: str) -> None:
    """Refuse an offer the SFU could only half apply: aiortc changes its state before it finds
    out that a sending m-line has no codec it knows."""
    for media in parse_description(sdp).media:
        sends = media.direction in (None, "sendrecv", "sendonly") and media.port != 0
        if media.kind in FORWARDABLE and sends and not any(
                _is_forwardable(media.kind, c) for c in media.rtp.codecs if c.payloadType in media.fmt):
            raise SfuError("unsupported_codec",
                           f"the {media.kind} section (mid {media.rtp.muxId}) offers none of "
                           f"{', '.join(FORWARDABLE[media.kind])}, the codecs the SFU forwards")


def align_bundled_setup(sdp: str, own_role: str | None) -> str:
    """``sdp`` with one ``a=setup`` value on every m-line of its BUNDLE group: the one that keeps
    ``own_role`` (our transport's negotiated DTLS role) once there is one, else the tagged
    (first) m-line's. Only those lines change; m-lines outside the group keep theirs."""
    lines = sdp.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")]
    if not starts:
        return sdp
    bundle = next((line.split()[1:] for line in lines[:starts[0]] if line.startswith("a=group:BUNDLE ")), [])
    if not bundle:
        return sdp
    sections = [range(start, end) for start, end in zip(starts, [*starts[1:], len(lines)])]

    def attribute(section: range, name: str) -> str | None:
        return next((lines[i][len(name):].strip() for i in section if lines[i].startswith(name)), None)

    bundled = [section for section in sections if attribute(section, "a=mid:") in bundle]
    setup = REMOTE_SETUP.get(own_role or "")
    if setup is None:
        tagged = next((section for section in bundled if attribute(section, "a=mid:") == bundle[0]), None)
        setup = attribute(tagged, "a=setup:") if tagged is not None else None
        if setup is None:
            return sdp
    for section in bundled:
        for i in section:
            if lines[i].startswith("a=setup:"):
                line_end = lines[i][len(lines[i].rstrip("\r\n")):]
                lines[i] = f"a=setup:{setup}{line_end}"
    return "".join(lines)


def _sections(sdp: str) -> tuple[list[str], list[range]]:
    """The lines of ``sdp`` (line ends kept) and the line ranges of its m-sections."""
    lines = sdp.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")]
    return lines, [range(start, end) for start, end in zip(starts, [*starts[1:], len(lines)])]


def simulcast_layers(sdp: str) -> dict[str, list[str]]:
    """The rids each m-line (by mid) sends as simulcast, in the order its ``a=simulcast:send``
    lists them: the client lists its encodings from the lowest to the highest. A paused rid
    (``~``) counts, an alternative (``,``) does not: a browser sends the first; a rid without its
    ``a=rid:… send`` line is left out."""
    lines, sections = _sections(sdp)
    layers: dict[str, list[str]] = {}
    for section in sections:
        attributes = [lines[i].rstrip("\r\n") for i in section]
        mid = next((a[len("a=mid:"):].strip() for a in attributes if a.startswith("a=mid:")), None)
        declared = {a.split()[0][len("a=rid:"):] for a in attributes
                    if a.startswith("a=rid:") and a.split()[1:2] == ["send"]}
        tokens = next((a[len("a=simulcast:"):].split() for a in attributes if a.startswith("a=simulcast:")), [])
        sent = tokens[tokens.index("send") + 1] if "send" in tokens[:-1] else ""
        rids = [stream.split(",")[0].lstrip("~") for stream in sent.split(";") if stream]
        rids = [rid for rid in rids if rid in declared]
        if mid is not None and len(rids) > 1:
            layers[mid] = rids
    return layers


def with_simulcast_receive(sdp: str, layers: dict[str, list[str]]) -> str:
    """``sdp`` (the SFU's own description) with ``a=rid:… recv`` and ``a=simulcast:recv …`` on each
    m-line whose mid ``layers`` names; m-lines that already carry them are left as they are."""
    lines, sections = _sections(sdp)
    for section in reversed(sections):
        attributes = [lines[i] for i in section]
        mid = next((a[len("a=mid:"):].strip() for a in attributes if a.startswith("a=mid:")), None)
        rids = layers.get(mid or "")
        if not rids or any(a.startswith("a=simulcast:") for a in attributes):
            continue
        line_end = attributes[0][len(attributes[0].rstrip("\r\n")):] or "\r\n"
        added = [f"a=rid:{rid} recv{line_end}" for rid in rids] + [f"a=simulcast:recv {';'.join(rids)}{line_end}"]
        lines[section.stop:section.stop] = added
    return "".join(lines)


def with_loss_protection(codec: RTCRtpCodecParameters) -> RTCRtpCodecParameters:
    """``codec`` as the SFU negotiates it: Opus with ``OPUS_PARAMETERS``, anything else as it is."""
    if codec.mimeType.lower() != "audio/opus":
        return codec
    return dataclasses.replace(codec, parameters={**codec.parameters, **OPUS_PARAMETERS})


def codec_preferences(codec: RTCRtpCodecParameters) -> list[RTCRtpCodecCapability]:
    """Codec preferences that make a downstream transceiver offer exactly the publisher's codec
    (and RTX for video); the Opus parameters the SFU adds itself are left out of the match."""
    capabilities = RTCRtpSender.getCapabilities(codec.mimeType.split("/")[0]).codecs
    parameters = {k: v for k, v in codec.parameters.items() if k not in OPUS_PARAMETERS}
    same = next(c for c in capabilities if is_codec_compatible(c, codec)  # type: ignore[arg-type]
                and c.parameters == parameters)
    return [same, *(c for c in capabilities if c.name == "rtx")]


class SessionPayloads:
    """Payload types and header-extension IDs a session already uses, to number new m-lines."""

    def __init__(self, descriptions: Iterable[str]) -> None:
        self.codecs: list[RTCRtpCodecParameters] = []
        self.extension_ids: dict[str, int] = {}
        for sdp in descriptions:
            for media in aiortc_sdp.SessionDescription.parse(sdp).media:
                self.codecs += media.rtp.codecs
                for extension in media.rtp.headerExtensions:
                    self.extension_ids.setdefault(extension.uri, extension.id)
        self._used_payload_types = {c.payloadType for c in self.codecs}
        self._used_extension_ids = set(self.extension_ids.values())

    def number_codecs(self, codecs: list[RTCRtpCodecParameters]) -> list[RTCRtpCodecParameters]:
        """Copies of ``codecs`` with the session's payload types, or free ones if new to it."""
        numbered: dict[int | None, RTCRtpCodecParameters] = {}
        for codec in codecs:
            if codec.name != "rtx":
                known = next((k for k in self.codecs
                              if k.name != "rtx" and is_codec_compatible(k, codec)), None)
                numbered[codec.payloadType] = copy = dataclasses.replace(
                    codec, payloadType=known.payloadType if known else self._free_payload_type(),
                    parameters=dict(codec.parameters))
                if known is None:  # later m-lines of the same offer reuse it
                    self.codecs.append(copy)
        result = []
        for codec in codecs:
            if codec.name != "rtx":
                result.append(numbered[codec.payloadType])
                continue
            apt = codec.parameters.get("apt")
            base = numbered.get(apt) if isinstance(apt, int) else None
            if base is None:
                continue
            known = next((k for k in self.codecs
                          if k.name == "rtx" and k.parameters.get("apt") == base.payloadType), None)
            copy = dataclasses.replace(
                codec, payloadType=known.payloadType if known else self._free_payload_type(),
                parameters={"apt": base.payloadType})
            if known is None:
                self.codecs.append(copy)
            result.append(copy)
        return result

    def number_extensions(self, extensions: list[RTCRtpHeaderExtensionParameters]
                          ) -> list[RTCRtpHeaderExtensionParameters]:
        result = []
        for extension in extensions:
            ext_id = self.extension_ids.get(extension.uri)
            if ext_id is None:
                ext_id = next((i for i in EXTENSION_IDS if i not in self._used_extension_ids), None)
                if ext_id is None:
                    continue
                self.extension_ids[extension.uri] = ext_id
                self._used_extension_ids.add(ext_id)
            result.append(RTCRtpHeaderExtensionParameters(id=ext_id, uri=extension.uri))
        return result

    def _free_payload_type(self) -> int:
        for payload_type in DYNAMIC_PAYLOAD_TYPES:
            if payload_type not in self._used_payload_types:
                self._used_payload_types.add(payload_type)
                return payload_type
        raise SfuError("internal", "the session has run out of dynamic RTP payload types")


class SfuPeerConnection(RTCPeerConnection):
    """An RTCPeerConnection whose negotiation suits passthrough forwarding (see module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The rids each simulcast m-line (by mid) sends, lowest first, as the latest remote
        # description says.
        self.simulcast: dict[str, list[str]] = {}

    @property
    def localDescription(self) -> RTCSessionDescription:
        """aiortc's description, with the simulcast it cannot write (aiortc keeps descriptions
        parsed and writes them anew each time)."""
        description = super().localDescription
        if description is None or not self.simulcast:
            return description
        return RTCSessionDescription(sdp=with_simulcast_receive(description.sdp, self.simulcast),
                                     type=description.type)

    async def setRemoteDescription(self, sessionDescription: RTCSessionDescription) -> None:
        sessionDescription = RTCSessionDescription(
            sdp=align_bundled_setup(sessionDescription.sdp, aiortc_private.dtls_role(self)),
            type=sessionDescription.type)
        await super().setRemoteDescription(sessionDescription)
        if sessionDescription.type == "offer":
            self._choose_upstream_codecs()
        self._keep_remote_extensions(sessionDescription.sdp)

    def _keep_remote_extensions(self, sdp: str) -> None:
        """Take what aiortc does not know from the remote description: the rid header extensions
        of every simulcast m-line, and transport-cc (the extension, and the feedback on each codec
        the remote side asks it for). aiortc negotiates only the extensions and feedback it knows,
        again on every remote description; put back here, the SFU's descriptions keep them. The
        transport is made to parse the extensions now: aiortc may start the m-line's receiver
        while a description is being set, after it dropped them and before they are put back
        here (its connection task runs while setRemoteDescription waits on the remote
        candidates), and the transport reads only what its receivers started with."""
        self.simulcast = simulcast_layers(sdp)
        remote = {media.rtp.muxId: media for media in aiortc_sdp.SessionDescription.parse(sdp).media}
        for transceiver in self.getTransceivers():
            media = remote.get(transceiver.mid)
            if media is None:
                continue
            kept = {TRANSPORT_CC_URI, *(SIMULCAST_EXTENSIONS if transceiver.mid in self.simulcast else ()),
                    *((PLAYOUT_DELAY_URI,) if transceiver.kind == "video" and transceiver.direction == "sendonly" else ())}
            wanted = [e for e in media.rtp.headerExtensions if e.uri in kept]
            if not wanted:
                continue
            extensions = aiortc_private.header_extensions(transceiver)
            known = {e.uri for e in extensions}
            aiortc_private.set_header_extensions(transceiver, [*extensions, *(e for e in wanted if e.uri not in known)])
            aiortc_private.parse_header_extensions(transceiver, wanted)
            if any(e.uri == TRANSPORT_CC_URI for e in wanted):
                asked = {c.payloadType for c in media.rtp.codecs if TRANSPORT_CC in c.rtcpFeedback}
                aiortc_private.set_codecs(transceiver, [
                    dataclasses.replace(c, rtcpFeedback=[*c.rtcpFeedback, TRANSPORT_CC])
                    if c.payloadType in asked and TRANSPORT_CC not in c.rtcpFeedback else c
                    for c in aiortc_private.codecs(transceiver)])

    def _choose_upstream_codecs(self) -> None:
        for transceiver in self.getTransceivers():
            if aiortc_private.offered_direction(transceiver) not in ("recvonly", "sendrecv"):
                continue
            negotiated = aiortc_private.codecs(transceiver)
            chosen = next((c for mime in FORWARDABLE[transceiver.kind] for c in negotiated
                           if c.mimeType.lower() == mime.lower()), None)
            if chosen is None:
                continue
            rtx = [c for c in negotiated if c.name == "rtx" and c.parameters.get("apt") == chosen.payloadType]
            aiortc_private.set_codecs(transceiver, [with_loss_protection(chosen), *rtx])

    async def createOffer(self) -> RTCSessionDescription:
        negotiated = {t: (aiortc_private.codecs(t), aiortc_private.header_extensions(t))
                      for t in self.getTransceivers() if t.mid is not None}
        offer = await super().createOffer()
        payloads = SessionPayloads(d.sdp for d in (self.remoteDescription, self.localDescription) if d)
        by_index = {aiortc_private.mline_index(t): t for t in self.getTransceivers()}
        description = aiortc_sdp.SessionDescription.parse(offer.sdp)
        for index, media in enumerate(description.media):
            transceiver = by_index.get(index)
            if transceiver is None or media.kind not in FORWARDABLE:
                continue
            if transceiver in negotiated:
                codecs, extensions = negotiated[transceiver]
            else:
                codecs = [with_loss_protection(c) for c in payloads.number_codecs(aiortc_private.codecs(transceiver))]
                offered = aiortc_private.header_extensions(transceiver)
                if media.kind == "video" and transceiver.direction == "sendonly":  # a subscriber's video
                    offered = [*offered, RTCRtpHeaderExtensionParameters(id=0, uri=PLAYOUT_DELAY_URI),
                               RTCRtpHeaderExtensionParameters(id=0, uri=TRANSPORT_CC_URI)]
                    codecs = [c if c.name == "rtx" or TRANSPORT_CC in c.rtcpFeedback
                              else dataclasses.replace(c, rtcpFeedback=[*c.rtcpFeedback, TRANSPORT_CC]) for c in codecs]
                extensions = payloads.number_extensions(offered)
            aiortc_private.set_codecs(transceiver, codecs)
            aiortc_private.set_header_extensions(transceiver, extensions)
            if transceiver.direction == "inactive":  # a stopped track: it sends nothing, names nothing
                media.msid = None
            media.rtp.codecs = codecs
            media.fmt = [c.payloadType for c in codecs]
            media.rtp.headerExtensions = extensions
        return RTCSessionDescription(sdp=str(description), type="offer")
