/**
 * The vhost-user wire codecs alone (sandbox/vhost-user/messages.ts, payloads.ts): the header, the
 * payload size rules, and each payload's decoder, at the speed libFuzzer likes (the vhost-user target
 * runs them inside a real connection, far slower). Properties:
 *   - decoders throw nothing but VhostUserError;
 *   - what decodes re-encodes to something that decodes to the same value;
 *   - a payload of the size checkPayloadSize accepts for a fixed-size request is never refused by
 *     its decoder for its size (the two layers agree).
 */
import { isDeepStrictEqual } from 'node:util';

import { VhostUserError, VU } from '../../sandbox/vhost-user/errors.ts';
import {
  PAYLOAD_SIZE, REQ, checkPayloadSize, decodeConfig, decodeHeader, decodeInflight, decodeLog, decodeMemTable, decodeSingleMemRegion,
  decodeU64, decodeVringAddr, decodeVringFile, decodeVringState, encodeConfig, encodeHeader, encodeInflight, encodeLog, encodeMemTable,
  encodeSingleMemRegion, encodeU64, encodeVringAddr, encodeVringFile, encodeVringState,
} from '../../sandbox/vhost-user/messages.ts';
import { Input, type FuzzTarget } from '../target.ts';

type Codec = [decode: (b: Uint8Array) => unknown, encode: (v: never) => Uint8Array];
const U64: Codec = [decodeU64, encodeU64];
const STATE: Codec = [decodeVringState, encodeVringState];
const FILE: Codec = [decodeVringFile, (v: { index: number; noFd: boolean }) => encodeVringFile(v.index, v.noFd)];
const REGION: Codec = [decodeSingleMemRegion, encodeSingleMemRegion];
const CODECS: Partial<Record<number, Codec>> = {
  [REQ.SET_FEATURES]: U64, [REQ.SET_PROTOCOL_FEATURES]: U64, [REQ.SEND_RARP]: U64, [REQ.NET_SET_MTU]: U64, [REQ.SET_STATUS]: U64,
  [REQ.SET_VRING_NUM]: STATE, [REQ.SET_VRING_BASE]: STATE, [REQ.GET_VRING_BASE]: STATE, [REQ.SET_VRING_ENABLE]: STATE,
  [REQ.SET_VRING_KICK]: FILE, [REQ.SET_VRING_CALL]: FILE, [REQ.SET_VRING_ERR]: FILE,
  [REQ.SET_VRING_ADDR]: [decodeVringAddr, encodeVringAddr],
  [REQ.SET_MEM_TABLE]: [decodeMemTable, encodeMemTable],
  [REQ.ADD_MEM_REG]: REGION, [REQ.REM_MEM_REG]: REGION,
  [REQ.GET_CONFIG]: [decodeConfig, encodeConfig], [REQ.SET_CONFIG]: [decodeConfig, encodeConfig],
  [REQ.GET_INFLIGHT_FD]: [decodeInflight, (v: Parameters<typeof encodeInflight>[0]) => encodeInflight(v)],
  [REQ.SET_INFLIGHT_FD]: [decodeInflight, (v: Parameters<typeof encodeInflight>[0]) => encodeInflight(v)],
  [REQ.SET_LOG_BASE]: [decodeLog, encodeLog],
};
const REQUESTS = Object.keys(CODECS).map(Number);

function typed(e: unknown): VhostUserError {
  if (e instanceof VhostUserError) return e;
  throw e;
}

export default {
  about: 'vhost-user wire codecs: header, payload size rules, payload decoders and encoders',
  maxLen: 512,
  run(data) {
    const inp = new Input(data);
    const header = inp.bytes(12);
    const h = decodeHeader(header);
    if (!isDeepStrictEqual(decodeHeader(encodeHeader(h)), h)) throw new Error('header does not round-trip');
    const sel = inp.u8();
    const request = sel < 200 ? REQUESTS[sel % REQUESTS.length]! : h.request;
    const payload = inp.bytes(inp.left);
    let sizeOk = true;
    try {
      checkPayloadSize(request, payload.length);
    } catch (e) {
      if (typed(e).code !== VU.BAD_SIZE) throw new Error(`size check threw ${typed(e).code}`);
      sizeOk = false;
    }
    const codec = CODECS[request];
    if (!codec) return;
    const [decode, encode] = codec;
    let value: unknown;
    try {
      value = decode(payload);
    } catch (e) {
      const err = typed(e);
      if (sizeOk && err.code === VU.BAD_SIZE && typeof PAYLOAD_SIZE[request] === 'number') {
        throw new Error(`request ${request}: size ${payload.length} passes checkPayloadSize but its decoder refuses it (${err.message})`);
      }
      return;
    }
    const again = decode(encode(value as never));
    if (!isDeepStrictEqual(again, value)) throw new Error(`request ${request}: decode(encode(v)) differs from v`);
  },
} satisfies FuzzTarget;
