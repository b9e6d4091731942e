import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { App } from './App';
import { ChatClient, defaultSocketUrl } from './client';
import './styles.css';

const client = new ChatClient({ url: defaultSocketUrl() });
// For the end-to-end tests and for curious people with a console.
(window as unknown as { viche: ChatClient }).viche = client;

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <App client={client} />
  </StrictMode>,
);
