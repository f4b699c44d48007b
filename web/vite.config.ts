// The dashboard's build: every asset bundled into web/dist (no CDN: machines may be
// offline), served by the controller at / on its HTTP port (controller/dashboard.py).
import { defineConfig } from "vite";

export default defineConfig({
  base: "/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 1024,
  },
});
