/**
 * Guest RAM for the harness: a memfd mapped through the native registry, wrapped in a GuestMemory,
 * with a bump allocator. It plays the part of a VMM's guest memory: the device maps the same fd
 * (setMemory or vhost-user SET_MEM_TABLE) and both sides see the same bytes.
 */
import * as native from '../native/index.ts';
import { GuestMemory } from '../vring/index.ts';

/** A memfd-backed guest RAM region with a bump allocator. */
export class GuestRam {
  readonly fd: number;
  readonly mappingId: number;
  readonly size: number;
  /** Guest physical address of the first byte. */
  readonly gpa: number;
  /** The frontend's virtual address of the first byte (vhost-user; arbitrary but consistent). */
  readonly uaddr: number;
  readonly mem: GuestMemory;
  readonly u8: Uint8Array;
  private next: number;

  /**
   * Creates `size` bytes of RAM at guest physical address `gpa` (default 0), in a fresh memfd, or in
   * `fd` (at least `size` bytes; GuestRam owns it from now on): a tmpfs or hugetlbfs file, or a memfd
   * made with memfdCreate(…, { sealable: false }), to play a front-end whose memory can shrink.
   */
  constructor(size: number, opts: { gpa?: number; uaddr?: number; name?: string; fd?: number } = {}) {
    this.size = size;
    this.gpa = opts.gpa ?? 0;
    this.uaddr = opts.uaddr ?? 0x7f00_0000_0000 + this.gpa;
    this.fd = opts.fd ?? native.memfdCreate(opts.name ?? 'lgnet-guest-ram', size);
    this.mappingId = native.mmap(this.fd, 0, size);
    const buffer = native.mappingBuffer(this.mappingId);
    this.u8 = new Uint8Array(buffer, 0, size);
    this.mem = new GuestMemory([{ gpa: this.gpa, size, buffer, mappingId: this.mappingId, mappingOffset: 0, uaddr: this.uaddr }]);
    this.next = this.gpa + 4096; // keep page 0 unused: a zero address is a bug, not a buffer
  }

  /** Allocates `len` bytes aligned to `align`; returns the guest physical address. */
  alloc(len: number, align = 16): number {
    const at = Math.ceil(this.next / align) * align;
    if (at + len > this.gpa + this.size) {
      throw new RangeError(`guest RAM exhausted: ${len} bytes wanted, ${this.gpa + this.size - at} left of ${this.size}`);
    }
    this.next = at + len;
    return at;
  }

  /** Copies bytes into RAM at a guest physical address. */
  write(gpa: number, bytes: Uint8Array): void {
    this.mem.write(gpa, bytes);
  }

  /** Copies `len` bytes out of RAM. */
  read(gpa: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    this.mem.read(gpa, out);
    return out;
  }

  /** The region as NetDevice.setMemory takes it. */
  region(): { gpa: number; size: number; fd: number; mmapOffset: number; uaddr: number } {
    return { gpa: this.gpa, size: this.size, fd: this.fd, mmapOffset: 0, uaddr: this.uaddr };
  }

  /** Unmaps and closes the memfd. */
  close(): void {
    native.munmap(this.mappingId);
    native.close(this.fd);
  }
}
