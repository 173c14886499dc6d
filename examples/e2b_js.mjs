// E2B's JavaScript quickstart, unchanged but for its first line (dotenv's `.env` loading):
// E2B's own SDK, pointed at firebox by the environment alone.
//
//   eval "$(.venv/bin/firebox e2b env)"
//   node examples/e2b_js.mjs
import { Sandbox } from '@e2b/code-interpreter'

const sbx = await Sandbox.create() // By default the sandbox is alive for 5 minutes
const execution = await sbx.runCode('print("hello world")') // Execute Python inside the sandbox
console.log(execution.logs)

const files = await sbx.files.list('/')
console.log(files)
