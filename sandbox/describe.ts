/**
 * What QEMU's vhost-user back-end conventions (docs/interop/vhost-user.rst, "Backend program
 * conventions", and the vhost-user.json schema) ask of a back-end program, so that management software
 * (libvirt, a VMM's launcher) can find lgnet and start it without knowing its own flags:
 *
 *   - a program that takes `--socket-path=PATH` or `--fd=FDNUM` and `--print-capabilities`: that is
 *     `lgnet-vhost-user` (bin/), which is `lgnet serve` under the conventions' name;
 *   - a JSON file describing it (@VhostUserBackend: description, type, binary), installed as
 *     /usr/share/qemu/vhost-user/NN-name.json or /etc/qemu/vhost-user/NN-name.json: `lgnet describe`
 *     prints it, naming the program of this installation by its absolute path.
 */
import { accessSync, constants, realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { packageVersion } from './cli.ts';

/** The conventions' program name in bin/. */
export const CONVENTION_BIN = 'lgnet-vhost-user';

/**
 * `--print-capabilities`' answer (@VHostUserBackendCapabilities). The schema defines no features for
 * the `net` type, so the type is all there is to say.
 */
export const CAPABILITIES = { type: 'net' } as const;

/** The @VhostUserBackend document for a back-end program at `binary`. */
export interface BackendDescription {
  description: string;
  type: 'net';
  binary: string;
  tags: string[];
}

/**
 * The absolute path of this installation's `lgnet-vhost-user`, symlinks resolved: bin/ sits one level
 * above sandbox/ in a clone and two above dist/sandbox/ in what ships. Throws when neither has it.
 */
export function conventionBinary(): string {
  for (const rel of [`../bin/${CONVENTION_BIN}`, `../../bin/${CONVENTION_BIN}`]) {
    const path = fileURLToPath(new URL(rel, import.meta.url));
    try {
      accessSync(path, constants.X_OK);
      return realpathSync(path);
    } catch { /* not at this level */ }
  }
  throw new Error(`${CONVENTION_BIN} is not in this installation's bin/ (a package without it is incomplete: reinstall lgnet)`);
}

/** The JSON file's content, for the program at `binary` (default: this installation's). */
export function backendDescription(binary: string = conventionBinary()): BackendDescription {
  const version = packageVersion();
  return {
    description: `lgnet ${version}: virtio-net vhost-user back-end on a Linux tap`,
    type: CAPABILITIES.type,
    binary,
    tags: [`lgnet-${version}`],
  };
}
