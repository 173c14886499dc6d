"""A javascript (or typescript) code context: one node process evaluating cells through node's
own REPL.

The program is a string here (read by a one-line ``node -e`` loader from a pipe) so the agent
package stays Python files only. Node's REPL evaluator is what gives notebook semantics for
free: every cell runs in the one global context, so ``let``/``const``/``class``/function
declarations persist, and a cell that uses top-level ``await`` is rewritten by node (its
acorn-based await transform) into an async function whose declarations still land in the
global scope.

It speaks wire.py's framing: ``run`` lines on the command fd, ``result``/``error``/``done``
lines on the message fd (written synchronously, so they follow anything the cell wrote
before). ``console.log`` goes straight to fd 1, which the agent forwards (pipes are written
synchronously by node on Linux, so it is in the pipe before ``done``). The cell's final value
becomes a text/plain result (``util.inspect``, as the REPL prints it); ``undefined`` gives none.

A typescript context is the same with each cell first stripped of its types by the TypeScript
compiler's transpiler (the image's node-typescript; no type checking, as E2B's kernel does
not stop on types either): node older than 22.6 cannot strip types itself.

Interrupts (the agent's timeout sends SIGINT): while synchronous code runs, the REPL's
``breakEvalOnSigint`` makes V8 throw; while a cell awaits, our SIGINT handler ends the cell
(its promise is abandoned). A busy loop after an ``await`` cannot be interrupted: the agent
then kills and restarts the context.
"""

from __future__ import annotations

PROGRAM = r"""
'use strict';
const fs = require('fs');
const net = require('net');
const repl = require('repl');
const { PassThrough, Writable } = require('stream');
const util = require('util');

const dialect = process.argv[process.argv.length - 3];
const [cmdFd, msgFd] = process.argv.slice(-2).map(Number);
let ts = null;  // the TypeScript compiler, loaded by the first typescript cell

function javascript(code) {
  if (dialect !== 'ts') return code;
  if (ts === null) {
    try { ts = require('typescript'); } catch (e) {
      throw new Error('typescript cells need the TypeScript compiler (Debian\'s node-typescript) '
                      + 'in the sandbox image; use the python template');
    }
  }
  // a script, not a module: declarations stay global, so the next cell sees them
  return ts.transpile(code, { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.None,
                              removeComments: false });
}

function send(message) {
  const line = Buffer.from(JSON.stringify(message) + '\n', 'utf8');
  let offset = 0;
  while (offset < line.length) offset += fs.writeSync(msgFd, line, offset);
}

const server = repl.start({
  input: new PassThrough(),
  output: new Writable({ write(chunk, encoding, callback) { callback(); } }),
  prompt: '',
  terminal: false,
  useGlobal: true,
  ignoreUndefined: true,
  breakEvalOnSigint: true,
  preview: false,
});

// A frame of node itself, of this program or of the REPL tells the user nothing.
const internal = new RegExp(
  String.raw`\((node:|\[eval\])|^\s+at (node:|\[eval\]|new Script |Script\.|REPLServer)`);

function describe(error) {
  if (error instanceof repl.Recoverable) error = error.err;  // incomplete input: a SyntaxError
  if (error instanceof Error || (error && typeof error.stack === 'string')) {
    const lines = String(error.stack || `${error.name}: ${error.message}`).split('\n');
    const kept = lines.filter((line, i) => i === 0 || (line.trim() && !internal.test(line)));
    return { name: String(error.name || 'Error'), value: String(error.message ?? ''),
             traceback: kept.join('\n') };
  }
  const shown = util.inspect(error);
  return { name: 'Error', value: shown, traceback: `Uncaught ${shown}` };
}

let current = null;
let count = 0;
const waiting = [];

function finish(cell, error, value) {
  if (cell !== current) return;  // a late answer for a cell already reported
  current = null;
  try {
    if (error !== undefined && error !== null) {
      send({ k: 'error', ...describe(error) });
    } else if (value !== undefined) {
      send({ k: 'result', main: true, data: { 'text/plain': util.inspect(value) } });
    }
  } finally {
    for (const [name, old] of Object.entries(cell.saved)) {
      if (old === undefined) delete process.env[name]; else process.env[name] = old;
    }
    send({ k: 'done', seq: cell.seq, count: cell.count });
  }
  if (waiting.length) run(waiting.shift());
}

function run(request) {
  if (current) { waiting.push(request); return; }
  const cell = { seq: request.seq, count: ++count, saved: {} };
  for (const [name, value] of Object.entries(request.env || {})) {
    cell.saved[name] = process.env[name];
    process.env[name] = String(value);
  }
  current = cell;
  let code;
  try { code = javascript(String(request.code)); } catch (error) {
    finish(cell, error);
    return;
  }
  // Our SIGINT listener must be off while the REPL evaluates: node's SIGINT watchdog (what
  // breakEvalOnSigint uses) is undone when a listener is removed and re-added around the
  // script, and the signal would then kill the process instead of stopping the script.
  process.removeListener('SIGINT', onSigint);
  try {
    server.eval(code + '\n', server.context, `cell${cell.count}`,
                (error, value) => finish(cell, error, value));
  } finally {
    process.on('SIGINT', onSigint);
  }
}

function uncaught(error) {
  if (current) finish(current, error);
  else process.stderr.write(`Uncaught ${describe(error).traceback}\n`);
}

// The REPL's evaluator reports a cell's errors (thrown, or rejected after an await) to its
// domain, whose own handler would print them to the REPL's output: take them instead.
server._domain.removeAllListeners('error');
server._domain.on('error', uncaught);
process.on('uncaughtException', uncaught);
process.on('unhandledRejection', uncaught);
// A cell waiting on a promise is ended here (the promise is abandoned); between cells a late
// interrupt is ignored, and without a listener node would exit.
function onSigint() {
  if (current) {
    const error = new Error('Script execution was interrupted by `SIGINT`');
    error.name = 'Interrupted';
    finish(current, error);
  }
}
process.on('SIGINT', onSigint);

const commands = new net.Socket({ fd: cmdFd, readable: true, writable: false });
commands.setEncoding('utf8');
let pending = '';
commands.on('data', (chunk) => {
  pending += chunk;
  let end;
  while ((end = pending.indexOf('\n')) >= 0) {
    const line = pending.slice(0, end);
    pending = pending.slice(end + 1);
    let request;
    try { request = JSON.parse(line); } catch { continue; }
    if (request && request.k === 'run') run(request);
  }
});
commands.on('end', () => process.exit(0));
commands.on('error', () => process.exit(1));
send({ k: 'ready' });
"""


# The program comes through a pipe (``program_fd``), not on the command line, where every
# `ps` in the sandbox would show it. Direct eval keeps ``require`` in scope.
LOADER = (
    "const fs = require('fs'); const fd = Number(process.argv[1]); "
    "const program = fs.readFileSync(fd, 'utf8'); fs.closeSync(fd); eval(program);"
)


def argv(
    node: str, program_fd: int, cmd_fd: int, msg_fd: int, typescript: bool = False
) -> list[str]:
    dialect = "ts" if typescript else "js"
    return [node, "-e", LOADER, "--", str(program_fd), dialect, str(cmd_fd), str(msg_fd)]
