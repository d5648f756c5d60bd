/** systemd's socket-activation variables (sandbox/listen-fds.ts), read as sd_listen_fds(3) reads them. */
import { describe, expect, it } from 'vitest';
import { chooseListenFd, LISTEN_FDS_START, namedListenFd, takeListenFds } from '../../sandbox/listen-fds.ts';

describe('takeListenFds', () => {
  it('takes fds from 3 with their names, and removes the variables', () => {
    const env: NodeJS.ProcessEnv = { LISTEN_PID: '77', LISTEN_FDS: '2', LISTEN_FDNAMES: 'metrics:vhost-user', KEEP: 'x' };
    expect(takeListenFds(env, 77)).toEqual({ fds: [LISTEN_FDS_START, LISTEN_FDS_START + 1], names: ['metrics', 'vhost-user'] });
    expect(env).toEqual({ KEEP: 'x' });
  });
  it('has no hand-over for another pid, without LISTEN_PID, or without a count of at least one, and still removes the variables', () => {
    for (const env of [
      { LISTEN_PID: '78', LISTEN_FDS: '1' },
      { LISTEN_FDS: '1' },
      { LISTEN_PID: '77', LISTEN_FDS: '0' },
      { LISTEN_PID: '77', LISTEN_FDS: '-1' },
      { LISTEN_PID: '77', LISTEN_FDS: 'one' },
      { LISTEN_PID: '77' },
      { LISTEN_PID: ' 77', LISTEN_FDS: '1' },
    ] as NodeJS.ProcessEnv[]) {
      expect(takeListenFds(env, 77), JSON.stringify(env)).toBeUndefined();
      expect(env).toEqual({});
    }
  });
  it('keeps the fds but not names that do not match their count', () => {
    expect(takeListenFds({ LISTEN_PID: '5', LISTEN_FDS: '2', LISTEN_FDNAMES: 'vhost-user' }, 5)).toEqual({ fds: [3, 4], names: ['', ''] });
  });
  it('refuses a count no process can hold', () => {
    const env: NodeJS.ProcessEnv = { LISTEN_PID: '5', LISTEN_FDS: '9999999999' };
    expect(() => takeListenFds(env, 5)).toThrow(RangeError);
    expect(env).toEqual({});
  });
});

describe('chooseListenFd', () => {
  it('serves the only socket, whatever its name', () => {
    expect(chooseListenFd({ fds: [3], names: ['other'] })).toBe(3);
  });
  it('serves the one named vhost-user among several', () => {
    expect(chooseListenFd({ fds: [3, 4, 5], names: ['a', 'vhost-user', 'b'] })).toBe(4);
  });
  it("passes over the sockets named metrics and api: the other one is lgnet's", () => {
    expect(chooseListenFd({ fds: [3, 4], names: ['metrics', 'lgnet-vm1.socket'] })).toBe(4);
    expect(chooseListenFd({ fds: [3, 4, 5], names: ['metrics', 'a', 'vhost-user'] })).toBe(5);
    expect(chooseListenFd({ fds: [3], names: ['metrics'] })).toMatch(/is named 'metrics': hand over the vhost-user socket too/);
    expect(chooseListenFd({ fds: [3, 4, 5], names: ['api', 'lgnet-vm1.socket', 'metrics'] })).toBe(4);
    expect(chooseListenFd({ fds: [3, 4], names: ['metrics', 'api'] })).toMatch(/are named 'metrics' and 'api': hand over the vhost-user socket too/);
  });
  it('says what to do when none or two are named so', () => {
    expect(chooseListenFd({ fds: [3, 4], names: ['', ''] })).toMatch(/2 sockets were handed over \(LISTEN_FDS\), without names: name lgnet's FileDescriptorName=vhost-user/);
    expect(chooseListenFd({ fds: [3, 4], names: ['a', ''] })).toMatch(/named a, \(none\)/);
    expect(chooseListenFd({ fds: [3, 4], names: ['vhost-user', 'vhost-user'] })).toMatch(/2 of the 2 sockets .* are named 'vhost-user'/);
  });
});

describe('namedListenFd', () => {
  it('finds the socket named metrics or api, or none', () => {
    expect(namedListenFd({ fds: [3, 4], names: ['vhost-user', 'metrics'] }, 'metrics')).toBe(4);
    expect(namedListenFd({ fds: [3, 4, 5], names: ['api', 'vhost-user', 'metrics'] }, 'api')).toBe(3);
    expect(namedListenFd({ fds: [3], names: [''] }, 'metrics')).toBeUndefined();
    expect(namedListenFd({ fds: [3, 4], names: ['metrics', 'metrics'] }, 'metrics')).toMatch(/2 of the sockets .* are named 'metrics'/);
  });
});
