// A count of the renderer's work, for tests that check it stays linear in the input: bytes
// scanned and nodes made, not milliseconds (a shared machine's clock says little). Counting
// costs an increment; nothing reads it but tests.

export const meter = {
  chars: 0, // characters scanned by the block and inline parsers and the stream
  steps: 0, // delimiter, bracket and link-destination steps of the inline parser
  nodes: 0, // DOM nodes created
};

export function resetMeter() {
  meter.chars = 0;
  meter.steps = 0;
  meter.nodes = 0;
}
